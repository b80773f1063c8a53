"""The backbone adapter: everything the engine needs from a flow-matching text-to-image model,
obtained by driving a diffusers ``FluxPipeline``'s own components (no forked pipeline).

Conventions (specs/algorithms.md §0): latents are FLUX's *packed* latents, float
``[N, T, C]`` with T = (h/2)·(w/2) tokens of C = 4·latent_channels values, h×w the VAE latent
grid; σ = 1 is noise and σ = 0 is data; the transformer predicts the velocity v ≈ x₁ − x₀, so an
Euler step is x' = x + (σ' − σ)·v. Nothing here assumes the embedded model's sizes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from diffusers import FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

#: LoRA target modules per transformer family (peft ``target_modules``, matched as name suffixes).
#: FLUX: every attention projection of the double-stream (image and text streams) and single-stream
#: blocks, and the feed-forward layers — the set Flow-GRPO's FLUX LoRA adapts.
LORA_TARGETS: dict[str, list[str]] = {
    "flux": ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
             "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
             "ff_context.net.2", "proj_mlp", "proj_out"],
}
ADAPTER = "alignbench"


@dataclass
class PromptEmbeds:
    """Text conditioning for N samples.

    Attributes:
        prompt_embeds: float [N, L, D_t] T5-side sequence embeddings.
        pooled: float [N, D_p] CLIP-side pooled embeddings.
        text_ids: float [L, 3] FLUX text position ids (zeros).
    """

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def index(self, idx: torch.Tensor | Sequence[int]) -> PromptEmbeds:
        """Rows ``idx`` (repeats allowed)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.pooled.device)
        return PromptEmbeds(self.prompt_embeds[idx], self.pooled[idx], self.text_ids)


class FluxBackbone:
    """Adapter over a ``FluxPipeline``.

    Args:
        pipe: the pipeline (its components are used as they are; moved to ``device``).
        height, width: image size in pixels (multiples of 2·vae_scale_factor).
        max_sequence_length: T5-side prompt length in tokens.
        guidance_scale: value fed to the guidance embedding when the transformer has one
            (FLUX.1-dev: 3.5); ignored otherwise.
        device: torch device of every component.
        true_cfg_scale: classifier-free guidance scale w (Ho & Salimans 2022; FluxPipeline's
            ``true_cfg_scale`` with the empty negative prompt): v = v(∅) + w·(v(c) − v(∅)). 1 = off.
            Above 1 every velocity costs two transformer rows per sample (both counted in NFE), and
            gradients flow through both, as in Flow-GRPO's CFG rollouts on SD3.5.
    """

    family = "flux"

    def __init__(self, pipe: FluxPipeline, height: int, width: int, max_sequence_length: int = 512,
                 guidance_scale: float = 3.5, device: str | torch.device = "cpu", true_cfg_scale: float = 1.0):
        self.pipe = pipe
        self.device = torch.device(device)
        pipe.to(self.device)
        for module in pipe.components.values():  # every model component is frozen; LoRA adds the trained part
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
                module.eval()
        pipe.set_progress_bar_config(disable=True)
        self.height, self.width = height, width
        self.max_sequence_length = max_sequence_length
        self.guidance_scale = guidance_scale
        if true_cfg_scale < 1:
            raise ValueError(f"true_cfg_scale must be >= 1 (1 = no guidance), got {true_cfg_scale}")
        self.true_cfg_scale = float(true_cfg_scale)
        self.dtype = pipe.transformer.dtype
        f = pipe.vae_scale_factor
        if height % (2 * f) or width % (2 * f):
            raise ValueError(f"height and width must be multiples of {2 * f}, got {height}×{width}")
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._set_latent_geometry(f)
        self.nfe = 0  # transformer forward passes × batch rows, counted by velocity()
        self._override: dict[str, torch.Tensor] | None = None  # parameter values of reference(lora_state)

    def _set_latent_geometry(self, f: int) -> None:
        """FLUX: the VAE latent grid (h, w), its channels (the transformer's packed input ÷ 4) and the
        image position ids of the packed tokens."""
        self.latent_h, self.latent_w = 2 * (self.height // (2 * f)), 2 * (self.width // (2 * f))
        self.latent_channels = self.pipe.transformer.config.in_channels // 4
        self._img_ids = self.pipe._prepare_latent_image_ids(1, self.latent_h // 2, self.latent_w // 2, self.device,
                                                            self.dtype)

    # ----------------------------------------------------------------------------------- shapes
    @property
    def transformer(self) -> torch.nn.Module:
        """The pipeline's own transformer (with the LoRA adapter once attached)."""
        return self.pipe.transformer

    @property
    def latent_shape(self) -> tuple[int, int]:
        """(T, C) of one packed latent: tokens and channels per token."""
        return (self.latent_h // 2) * (self.latent_w // 2), 4 * self.latent_channels

    # ----------------------------------------------------------------------------------- text
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> PromptEmbeds:
        """Embeddings of ``prompts`` via ``FluxPipeline.encode_prompt``, batched over the prompts not
        yet cached and cached per prompt string (the text encoders are frozen)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            pe, pooled, _ = self.pipe.encode_prompt(missing, None, device=self.device,
                                                     max_sequence_length=self.max_sequence_length)
            for i, p in enumerate(missing):
                self._cache[p] = (pe[i], pooled[i])
        pe = torch.stack([self._cache[p][0] for p in prompts])
        pooled = torch.stack([self._cache[p][1] for p in prompts])
        text_ids = torch.zeros(pe.shape[1], 3, device=self.device, dtype=self.dtype)
        return PromptEmbeds(pe, pooled, text_ids)

    # ----------------------------------------------------------------------------------- sampling
    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The scheduler's σ grid for ``num_steps`` steps, float64 [num_steps + 1] from 1 down to 0.

        FLUX: ``FlowMatchEulerDiscreteScheduler.set_timesteps`` on ``linspace(1, 1/N, N)`` with the
        resolution-dependent shift μ = ``calculate_shift(T)`` (specs/algorithms.md §0).

        Raises:
            ValueError: ``num_steps`` < 1.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        import copy

        import numpy as np

        sched = copy.deepcopy(self.pipe.scheduler)
        cfg = sched.config
        mu = calculate_shift(self.latent_shape[0], cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                             cfg.get("max_shift", 1.15))
        kwargs = {"mu": mu} if cfg.get("use_dynamic_shifting", False) else {}
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), device="cpu", **kwargs)
        return sched.sigmas.to(torch.float64)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Packed initial latents x₁ ~ N(0, I), one per seed (``pipe.prepare_latents`` with one
        ``torch.Generator`` per sample, so a sample's noise depends only on its seed): [N, T, C]."""
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        lat, _ = self.pipe.prepare_latents(len(gens), self.latent_channels, self.height, self.width,
                                           torch.float32, torch.device("cpu"), gens)
        return lat.to(self.device)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor | float, embeds: PromptEmbeds) -> torch.Tensor:
        """v_θ(x, σ, c): float [N, T, C] for packed latents ``x`` [N, T, C], ``sigma`` scalar or [N],
        and N rows of ``embeds``. Counts N in :attr:`nfe` (2N with classifier-free guidance, whose
        conditional and unconditional rows go through one batched forward)."""
        if self.true_cfg_scale == 1.0:
            return self._forward(x, sigma, embeds)
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, device=self.device, dtype=self.dtype).expand(n)
        neg = self.encode_prompts([""]).index([0] * n)
        both = PromptEmbeds(torch.cat([embeds.prompt_embeds, neg.prompt_embeds]),
                            torch.cat([embeds.pooled, neg.pooled]), embeds.text_ids)
        v = self._forward(torch.cat([x, x]), torch.cat([sigma, sigma]), both)
        v_c, v_u = v[:n], v[n:]
        return v_u + self.true_cfg_scale * (v_c - v_u)

    def _forward(self, x: torch.Tensor, sigma: torch.Tensor | float, embeds: PromptEmbeds) -> torch.Tensor:
        """One transformer forward: float [N, T, C]; counts N in :attr:`nfe`."""
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, device=self.device, dtype=self.dtype).expand(n)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((n,), self.guidance_scale, device=self.device, dtype=torch.float32)
        self.nfe += n
        kwargs = dict(hidden_states=x.to(self.dtype), timestep=sigma, guidance=guidance,
                      pooled_projections=embeds.pooled, encoder_hidden_states=embeds.prompt_embeds,
                      txt_ids=embeds.text_ids, img_ids=self._img_ids, return_dict=False)
        if self._override is not None:
            out = torch.func.functional_call(self.transformer, self._override, args=(), kwargs=kwargs)[0]
        else:
            out = self.transformer(**kwargs)[0]
        return out.float()

    @torch.no_grad()
    def sample_ode(self, embeds: PromptEmbeds, seeds: Sequence[int], num_steps: int,
                   batch_size: int = 256) -> torch.Tensor:
        """Deterministic Euler ODE sampling (the evaluation sampler): final packed latents [N, T, C]."""
        sig = self.sigmas(num_steps)
        outs = []
        for start in range(0, len(seeds), batch_size):
            x = self.initial_noise(seeds[start:start + batch_size])
            e = embeds.index(range(start, start + x.shape[0]))
            for i in range(num_steps):
                x = x + float(sig[i + 1] - sig[i]) * self.velocity(x, float(sig[i]), e)
            outs.append(x)
        return torch.cat(outs)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images float [N, 3, H, W] in [0, 1] from packed latents [N, T, C]: unpack, undo the VAE's
        scaling/shift, ``vae.decode``, ``image_processor.postprocess(output_type="pt")``."""
        vae = self.pipe.vae
        out = []
        for chunk in latents.split(batch_size):
            z = self.pipe._unpack_latents(chunk.to(self.dtype), self.height, self.width, self.pipe.vae_scale_factor)
            z = z / vae.config.scaling_factor + vae.config.shift_factor
            img = vae.decode(z.to(vae.dtype), return_dict=False)[0]
            out.append(self.pipe.image_processor.postprocess(img, output_type="pt").float())
        return torch.cat(out)

    # ----------------------------------------------------------------------------------- LoRA
    def add_lora(self, rank: int, alpha: float, target_modules: Sequence[str] | None = None,
                 seed: int | None = None) -> list[torch.nn.Parameter]:
        """Attach a peft LoRA adapter (B = 0 at init, so the model is unchanged) to the transformer.

        Args:
            rank, alpha: LoRA r and α (scale α/r).
            target_modules: module-name suffixes; default :data:`LORA_TARGETS` of the family, keeping
                those present in this transformer.
            seed: seeds the A-matrix initialisation.

        Returns:
            The trainable LoRA parameters.

        Raises:
            ValueError: no module matches ``target_modules``.
        """
        from peft import LoraConfig

        names = [n for n, _ in self.transformer.named_modules()]
        targets = list(target_modules or LORA_TARGETS[self.family])
        present = [t for t in targets if any(n == t or n.endswith("." + t) for n in names)]
        if not present:
            raise ValueError(f"no transformer module matches LoRA target_modules {targets}")
        if seed is not None:
            torch.manual_seed(seed)
        self.transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                                target_modules=present), adapter_name=ADAPTER)
        params = [p for n, p in self.transformer.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        return params

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        """The adapter's parameters (empty without an adapter)."""
        return [p for n, p in self.transformer.named_parameters() if "lora_" in n]

    @contextlib.contextmanager
    def reference(self, lora_state: dict[str, torch.Tensor] | None = None) -> Iterator[None]:
        """Reference-policy mode for the block.

        Args:
            lora_state: None: the LoRA adapter is disabled (the pretrained weights alone; no-op
                without an adapter). Otherwise {parameter name: tensor} for the adapter's parameters
                (a frozen snapshot, e.g. GARDO's adaptive reference, from :meth:`lora_state`): forwards
                inside the block use these values through ``torch.func.functional_call``, so the
                trained parameters are neither modified nor part of the reference's graph.
        """
        if lora_state is not None:
            self._override = lora_state
            try:
                yield
            finally:
                self._override = None
            return
        if not self.lora_parameters():
            yield
            return
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()

    def lora_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of the adapter's parameters, {name: tensor} (names as in
        ``transformer.named_parameters()``)."""
        return {n: p.detach().clone() for n, p in self.transformer.named_parameters() if "lora_" in n}


#: Stable Diffusion 3/3.5: the joint-attention projections of every MM-DiT block (image and text
#: streams), the LoRA target set of Flow-GRPO's SD3.5 recipe.
LORA_TARGETS["sd3"] = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                       "attn.add_v_proj", "attn.to_add_out"]


def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """[N, C, h, w] → [N, (h/2)·(w/2), 4C]: 2×2 patches as tokens, channel-major within a token (the
    layout FLUX packs into), so that every backbone hands the engine [N, T, C] latents."""
    n, c, h, w = z.shape
    return z.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(n, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents`: [N, (h/2)·(w/2), 4C] → [N, C, h, w]."""
    n, _, d = x.shape
    c = d // 4
    return x.view(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


class SD3Backbone(FluxBackbone):
    """Adapter over a diffusers ``StableDiffusion3Pipeline`` (SD3, SD3.5-Medium/Large), driving its
    own components: ``encode_prompt`` (two CLIP encoders and T5), ``prepare_latents``, the scheduler's
    σ grid (``set_timesteps(num_steps)`` as the pipeline calls it: static shift 3 for SD3.5), the
    ``SD3Transformer2DModel`` (timestep σ·1000, as the pipeline passes it) and the VAE.

    The engine sees the same packed [N, T, C] latents as with FLUX (:func:`pack_latents` of the
    [N, 16, h, w] VAE latents); classifier-free guidance is ``true_cfg_scale`` with the empty
    negative prompt, as the pipeline's ``guidance_scale`` (SD3.5-Medium: 4.5).

    Args: as :class:`FluxBackbone` (``guidance_scale`` is unused: SD3 has no guidance embedding).
    """

    family = "sd3"

    def _set_latent_geometry(self, f: int) -> None:
        """SD3: the VAE latent grid and its channels (the transformer patchifies it itself)."""
        self.latent_h, self.latent_w = self.height // f, self.width // f
        self.latent_channels = self.pipe.transformer.config.in_channels

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> PromptEmbeds:
        """Embeddings via ``StableDiffusion3Pipeline.encode_prompt`` (CLIP-L and CLIP-G pooled and
        sequence outputs joined with T5's, as the pipeline does), cached per prompt:
        prompt_embeds [N, 77 + L_t5, D], pooled [N, D_p]."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            pe, _, pooled, _ = self.pipe.encode_prompt(missing, None, None, device=self.device,
                                                       do_classifier_free_guidance=False,
                                                       max_sequence_length=self.max_sequence_length)
            for i, p in enumerate(missing):
                self._cache[p] = (pe[i], pooled[i])
        pe = torch.stack([self._cache[p][0] for p in prompts])
        pooled = torch.stack([self._cache[p][1] for p in prompts])
        return PromptEmbeds(pe, pooled, torch.zeros(pe.shape[1], 3, device=self.device, dtype=self.dtype))

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The scheduler's σ grid as ``StableDiffusion3Pipeline`` sets it (``set_timesteps(num_steps)``;
        SD3.5's static shift 3: σ = 3s/(1 + 2s) of a uniform s grid): float64 [num_steps + 1], 1 → 0.

        Raises:
            ValueError: ``num_steps`` < 1.
        """
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        import copy

        sched = copy.deepcopy(self.pipe.scheduler)
        sched.set_timesteps(num_steps, device="cpu")
        return sched.sigmas.to(torch.float64)

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """Packed x₁ ~ N(0, I) from ``pipe.prepare_latents`` with one generator per seed: [N, T, C]."""
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        z = self.pipe.prepare_latents(len(gens), self.latent_channels, self.height, self.width, torch.float32,
                                      torch.device("cpu"), gens)
        return pack_latents(z).to(self.device)

    def _forward(self, x: torch.Tensor, sigma: torch.Tensor | float, embeds: PromptEmbeds) -> torch.Tensor:
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, device=self.device, dtype=torch.float32).expand(n)
        self.nfe += n
        kwargs = dict(hidden_states=unpack_latents(x.to(self.dtype), self.latent_h, self.latent_w),
                      timestep=(sigma * 1000).to(self.dtype), encoder_hidden_states=embeds.prompt_embeds,
                      pooled_projections=embeds.pooled, return_dict=False)
        if self._override is not None:
            out = torch.func.functional_call(self.transformer, self._override, args=(), kwargs=kwargs)[0]
        else:
            out = self.transformer(**kwargs)[0]
        return pack_latents(out.float())

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images float [N, 3, H, W] in [0, 1]: unpack, z/scaling + shift, ``vae.decode``, postprocess."""
        vae = self.pipe.vae
        out = []
        for chunk in latents.split(batch_size):
            z = unpack_latents(chunk.to(self.dtype), self.latent_h, self.latent_w)
            z = z / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
            img = vae.decode(z.to(vae.dtype), return_dict=False)[0]
            out.append(self.pipe.image_processor.postprocess(img, output_type="pt").float())
        return torch.cat(out)
