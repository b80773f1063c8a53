"""The real architectures with random weights, for ``alignbench bench`` without any download
(issue 19): ``flux-dev-random`` and ``sd35m-random``.

The transformer is built from the published ``transformer/config.json`` values of the two Hub
repositories (transcribed below; they could not be re-read on the development machine, which has
no Hub access), randomly initialised in the model's dtype. Text conditioning is random too: each
prompt gets fixed random embeddings of the true shapes (FLUX.1-dev: T5 [512, 4096] and CLIP pooled
[768]; SD3.5-Medium: [77 + 256, 4096] and [2048]), seeded by the prompt's hash, so no text encoder
is loaded. The VAE is a small random ``AutoencoderKL`` with the real latent channels and 8× scale
factor, so decoded images have the true size at a fraction of the real VAE's cost; the bench
reward (:class:`RandomProjectionReward`) needs no weights. ``model.scale`` keeps that fraction of
the transformer blocks (at least one of each kind) with the same token count, so the same command
runs on a CPU.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from .backbone import FluxBackbone, PromptEmbeds, SD3Backbone

#: black-forest-labs/FLUX.1-dev, transformer/config.json (FluxTransformer2DModel)
FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56)}
#: stabilityai/stable-diffusion-3.5-medium, transformer/config.json (SD3Transformer2DModel)
SD35M_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm"}
#: text-conditioning shapes of each family's encoders: (CLIP tokens joined before T5's, width, pooled
#: width); the T5 length is the model's max_sequence_length (FLUX.1-dev 512, SD3.5 256)
TEXT_SHAPES = {"flux": (0, 4096, 768), "sd3": (77, 4096, 2048)}


def scaled(n: int, scale: float) -> int:
    """Blocks kept at ``scale``: round(n · scale), at least 1 (0 stays 0)."""
    return 0 if n == 0 else max(1, round(n * scale))


def transformer_config(family: str, scale: float = 1.0) -> dict[str, Any]:
    """The published transformer config of ``family`` with its block counts scaled.

    Raises:
        ValueError: unknown family or scale outside (0, 1].
    """
    if not 0 < scale <= 1:
        raise ValueError(f"model.scale must be in (0, 1], got {scale}")
    if family == "flux":
        cfg = dict(FLUX_DEV_TRANSFORMER)
        cfg["num_layers"] = scaled(cfg["num_layers"], scale)
        cfg["num_single_layers"] = scaled(cfg["num_single_layers"], scale)
        return cfg
    if family == "sd3":
        cfg = dict(SD35M_TRANSFORMER)
        n = scaled(cfg["num_layers"], scale)
        cfg["num_layers"] = n
        cfg["dual_attention_layers"] = tuple(i for i in cfg["dual_attention_layers"] if i < n)
        return cfg
    raise ValueError(f"family: '{family}' has no random architecture; allowed: flux, sd3")


def _small_vae(latent_channels: int, scaling: float, shift: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=8, scaling_factor=scaling, shift_factor=shift,
                         mid_block_add_attention=False)


class _RandomText:
    """Mixin: fixed random text embeddings per prompt, of the family's true shapes."""

    text_shape: tuple[int, int, int]

    @torch.no_grad()
    def encode_prompts(self, prompts):  # noqa: D102 - documented on the class
        clip_tokens, width, pooled_w = self.text_shape
        seq = clip_tokens + self.max_sequence_length
        pe, pooled = [], []
        for p in prompts:
            if p not in self._cache:
                g = torch.Generator().manual_seed(int(hashlib.sha256(p.encode()).hexdigest()[:12], 16))
                self._cache[p] = (torch.randn(seq, width, generator=g).to(self.device, self.dtype),
                                  torch.randn(pooled_w, generator=g).to(self.device, self.dtype))
            pe.append(self._cache[p][0])
            pooled.append(self._cache[p][1])
        pe_t = torch.stack(pe)
        return PromptEmbeds(pe_t, torch.stack(pooled), torch.zeros(seq, 3, device=self.device, dtype=self.dtype))


class RandomFluxBackbone(_RandomText, FluxBackbone):
    """FLUX.1-dev's transformer shapes with random weights and random text embeddings."""

    text_shape = TEXT_SHAPES["flux"]


class RandomSD3Backbone(_RandomText, SD3Backbone):
    """SD3.5-Medium's transformer shapes with random weights and random text embeddings."""

    text_shape = TEXT_SHAPES["sd3"]


def build_random_backbone(family: str, height: int, width: int, dtype: torch.dtype, device: str, scale: float = 1.0,
                          seed: int = 0, guidance_scale: float = 3.5, true_cfg_scale: float = 1.0,
                          max_sequence_length: int = 512):
    """The backbone adapter of a random real-architecture pipeline (module docstring).

    Raises:
        ValueError: unknown family or bad scale.
    """
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    cfg = transformer_config(family, scale)
    torch.manual_seed(seed)
    build = torch.device(device)  # initialise where it runs: 12B random weights take minutes on a CPU
    if family == "flux":
        with build:
            transformer = FluxTransformer2DModel(**cfg).to(dtype)
        # FLUX.1-dev's scheduler config: resolution-dependent shift
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                    base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                    max_image_seq_len=4096)
        pipe = FluxPipeline(scheduler=scheduler, vae=_small_vae(16, 0.3611, 0.1159).to(dtype), text_encoder=None,
                            tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
        return RandomFluxBackbone(pipe, height, width, max_sequence_length, guidance_scale, device,
                                  true_cfg_scale=true_cfg_scale)
    with build:
        transformer = SD3Transformer2DModel(**cfg).to(dtype)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler,
                                    vae=_small_vae(16, 1.5305, 0.0609).to(dtype), text_encoder=None, tokenizer=None,
                                    text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    return RandomSD3Backbone(pipe, height, width, max_sequence_length, 1.0, device, true_cfg_scale=true_cfg_scale)


def count_parameters(cfg: dict[str, Any], family: str) -> int:  # pragma: no cover - informational
    """Parameters of the transformer built from ``cfg`` (instantiated on the meta device)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    with torch.device("meta"):
        model = (FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel)(**cfg)
    return sum(p.numel() for p in model.parameters())

