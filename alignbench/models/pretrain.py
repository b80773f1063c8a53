"""``alignbench pretrain``: pretrain the embedded backbone on ShapesWorld.

Two phases (specs/shapes_world.md, "Embedded backbone"):

1. **VAE**: ``AutoencoderKL`` on freshly rendered scenes, loss = MSE(x̂, x) + β_KL · KL(q(z|x) ‖ N(0, I))
   (images in [-1, 1]; Kingma & Welling 2014, with the tiny KL weight of latent-diffusion VAEs).
   Afterwards the latent statistics of a fixed pool of scenes set the pipeline's
   ``shift_factor`` (mean) and ``scaling_factor`` (1/std), as FLUX's VAE config does.
2. **Transformer + both text encoders**: rectified-flow loss (Liu et al. 2023; Esser et al. 2024,
   eq. 1–3): x_σ = (1 − σ)·x₀ + σ·ε, target velocity v = ε − x₀, σ ~ logit-normal(0, 1) (SD3's
   timestep density), loss = ‖v_θ(x_σ, σ, prompt) − v‖² averaged over latent elements. The model
   sees the packed latents, image/text ids and pooled/sequence prompt embeddings exactly as
   ``FluxPipeline`` prepares them.

Captions come from the task prompt generators (GenEval format and OCR signs); every test prompt of
``tasks/data/*_test.jsonl`` and every OCR test target string is held out.

Determinism and resume: every random draw of step k comes from generators seeded with
(seed, phase, k), so a run killed at any point and resumed from its last checkpoint (model,
optimizer and step, written atomically) reaches bit-identical weights on CPU.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from ..config import StrictModel
from ..errors import UserError
from ..io import atomic_write_bytes, load_checkpoint_file, save_checkpoint_file, write_json
from ..world.palette import CLASSES
from ..world.prompts import (
    OCR_TEMPLATES,
    color_attr_sample,
    color_sample,
    counting_sample,
    geneval_splits,
    ocr_record,
    ocr_splits,
    position_sample,
    random_text,
    single_object_samples,
    two_object_sample,
)
from ..world.sample import scene_for_record
from ..world.scene import LABEL_CHANNELS, LETTER_CHANNELS, WorldConfig, render, render_with_labels
from .probe import DevProbe, ProbeConfig
from .tiny import TinyFluxConfig, build_tiny_pipeline, count_parameters

PHASE_VAE, PHASE_FLOW = 0, 1
COMPONENTS = ("vae", "text_encoder", "text_encoder_2", "transformer")
#: Caption kinds of the GenEval share, in the sampler's order.
CAPTION_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


class PretrainConfig(StrictModel):
    """Pretraining hyper-parameters (defaults: the shipped ``tiny-shapes`` weights)."""

    seed: int = Field(0, description="seed of initialisation, data and noise")
    model: TinyFluxConfig = Field(default_factory=TinyFluxConfig)
    vae_steps: int = Field(2000, ge=0, description="VAE optimizer steps")
    vae_batch: int = Field(32, ge=1)
    vae_lr: float = Field(2e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0, description="β_KL of the VAE loss")
    steps: int = Field(8000, ge=0, description="transformer/text-encoder optimizer steps")
    batch: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, description="peak AdamW learning rate of the transformer phase")
    warmup: int = Field(300, ge=0, description="linear warm-up steps (both phases)")
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    pool_size: int = Field(60000, ge=16, description="scenes rendered and encoded once for the flow phase")
    ocr_fraction: float = Field(0.4, ge=0, le=1, description="share of sign scenes among captions")
    checkpoint_every: int = Field(200, ge=1, description="steps between checkpoints")
    init_from: str | None = Field(None, description="start from this save_pretrained pipeline (a previous "
                                  "stage) instead of random weights; its VAE scaling is kept when vae_steps is 0")
    caption_dropout: float = Field(0.0, ge=0, lt=1, description="probability of training on the empty prompt "
                                   "instead of the caption (flow phase), so that the model also learns the "
                                   "unconditional velocity used by classifier-free guidance (Ho & Salimans 2022)")
    model_guidance: float = Field(0.0, ge=0, lt=1, description="w of model guidance (0 = off; Tang et al. 2025, "
                                  "'Diffusion Models without Classifier-free Guidance', arXiv 2502.12154, its MG objective with the flow target): "
                                  "captioned rows are trained toward u + w·sg(v(x_t, c) − v(x_t, ∅)), u = ε − x₀, so that "
                                  "one forward at sampling time approximates classifier-free guidance of scale 1/(1 − w); "
                                  "needs caption_dropout > 0 so that v(x_t, ∅) is learnt")
    model_guidance_start: int = Field(0, ge=0, description="flow step from which the model-guidance term is on "
                                      "(before it, only caption dropout: the unconditional velocity is learnt first)")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="EMA of the transformer/text-encoder weights in the "
                             "flow phase (0 = off); when on, the exported pipeline holds the EMA weights")
    init_components: tuple[str, ...] = Field(COMPONENTS, description="components copied from init_from (e.g. "
                                             "[vae] to train a new transformer on a shipped VAE)")
    init: Literal["default", "adaln_zero"] = Field("default", description="transformer initialisation: diffusers' "
                                                   "default, or adaLN-Zero (DiT, Peebles & Xie 2023, §3.2: every "
                                                   "modulation/gate linear and proj_out zeroed, so each block starts "
                                                   "as the identity)")
    schedule: Literal["cosine", "wsd"] = Field("cosine", description="flow-phase lr schedule: cosine to 10% over "
                                               "`steps`, or warm-up–stable–decay (constant after the warm-up, "
                                               "linear decay to 0 over the last decay_fraction of `steps`; a wsd run "
                                               "may be resumed with other steps and decay_fraction while it is still "
                                               "in its stable part under both)")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: share of `steps` spent decaying")
    adam_beta2: float = Field(0.999, gt=0, lt=1, description="AdamW β2 of the flow phase")
    tag_weights: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(CAPTION_TAGS, 1.0),
                                          description="relative frequency of each GenEval tag among the GenEval "
                                          "captions (single_object draws the train split's single-object prompts)")
    world: WorldConfig = Field(default_factory=WorldConfig, description="renderer settings of the pretraining "
                               "scenes (e.g. larger objects); evaluation always uses the world's defaults")
    align_weight: float = Field(0.0, ge=0, description="λ of the label-alignment loss (0 = off): a linear head on the "
                                "image tokens after block align_block predicts the renderer's exact per-cell labels "
                                "(class, colour, sign panel and ink coverage of each 2×2 latent cell), binary cross-"
                                "entropy; the head is dropped at export (a REPA-like representation loss, Yu et al. "
                                "2024, with the renderer's labels in place of a pretrained encoder)")
    align_block: int = Field(2, ge=0, description="block whose image-token output the label head reads (double-"
                             "stream blocks first, then single-stream, counted from 0)")
    align_letters: bool = Field(False, description="the label head also predicts each sign character's own ink "
                                "(one channel per letter of the OCR alphabet), so that the image tokens must know "
                                "which letter goes where, not only where ink goes")
    align_steps: int | None = Field(None, ge=0, description="flow steps with the label-alignment loss (None = all)")
    letter_weight: float = Field(0.0, ge=0, description="λ of the letter-classification loss (0 = off): a second "
                                 "linear head on align_block's image tokens names the sign letter that covers each "
                                 "token (cross-entropy over the OCR alphabet, averaged over the tokens whose letter "
                                 "ink is at least letter_min_ink), so that the letter identity gets a gradient of its "
                                 "own instead of a share of the label head's mean over all channels and tokens; needs "
                                 "align_letters; dropped at export like the label head")
    letter_min_ink: float = Field(0.08, gt=0, le=1, description="tokens (8×8 pixels) whose letter ink covers less "
                                  "than this share are left out of the letter loss")
    object_weight: float = Field(0.0, ge=0, description="λ of the object-weighted flow loss (0 = plain MSE): each "
                                 "latent cell's squared error is weighted by 1 + λ·(its object + sign-ink coverage), "
                                 "weights normalised to mean 1 over the batch, so that the small objects are not "
                                 "drowned by the background (needs the renderer's label maps, like align_weight)")
    images_before: int = Field(0, ge=0, description="images the init_from weights were already trained on (a "
                               "continuation across machines); added to the images seen of probe.jsonl so that "
                               "the learning curve continues")
    probe: ProbeConfig = Field(default_factory=ProbeConfig, description="the dev probe (train-split prompts, EMA "
                               "weights) logged to probe.jsonl every probe.every images")

    @field_validator("tag_weights")
    @classmethod
    def _check_tags(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in CAPTION_TAGS]
        if bad:
            raise ValueError(f"unknown tag {bad[0]!r}; allowed: {', '.join(CAPTION_TAGS)}")
        if any(w < 0 for w in v.values()) or not any(w > 0 for w in v.values()):
            raise ValueError("weights must be >= 0 and at least one > 0")
        return v

    @field_validator("init_components")
    @classmethod
    def _check_components(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [k for k in v if k not in COMPONENTS]
        if bad:
            raise ValueError(f"unknown component {bad[0]!r}; allowed: {', '.join(COMPONENTS)}")
        return tuple(v)

    @model_validator(mode="after")
    def _check_guidance(self) -> PretrainConfig:
        if self.model_guidance > 0 and self.caption_dropout == 0:
            raise ValueError("model_guidance > 0 needs caption_dropout > 0 (the unconditional velocity must be trained)")
        if self.align_letters and self.align_weight == 0:
            raise ValueError("align_letters needs align_weight > 0 (the letters are targets of the label head)")
        if self.letter_weight > 0 and not self.align_letters:
            raise ValueError("letter_weight > 0 needs align_letters = true (its targets are the letter channels)")
        return self


# ---------------------------------------------------------------------------------------- captions

_GENEVAL_MAKERS = (two_object_sample, counting_sample, color_sample, position_sample, color_attr_sample)  # CAPTION_TAGS[1:]


class CaptionSampler:
    """Draws training (format, metadata) pairs from the task generators, test prompts held out."""

    def __init__(self, ocr_fraction: float, tag_weights: dict[str, float] | None = None):
        self.ocr_fraction = ocr_fraction
        w = np.array([(tag_weights or {}).get(t, 1.0) for t in CAPTION_TAGS], dtype=np.float64)
        self.tag_p = None if np.all(w == w[0]) else w / w.sum()  # None: the original uniform draw
        _, test = geneval_splits()
        self.held_out = {r["prompt"] for r in test}
        self.single = [r for r in single_object_samples(np.random.default_rng(0)) if r["prompt"] not in self.held_out]
        _, ocr_test = ocr_splits()
        self.held_out_text = {r["text"] for r in ocr_test}

    def __call__(self, rng: np.random.Generator) -> tuple[str, dict]:
        if rng.random() < self.ocr_fraction:
            while True:
                text = random_text(rng)
                if text not in self.held_out_text:
                    return "ocr", ocr_record(text, int(rng.integers(len(OCR_TEMPLATES))))
        while True:
            k = (int(rng.integers(len(_GENEVAL_MAKERS) + 1)) if self.tag_p is None
                 else int(rng.choice(len(CAPTION_TAGS), p=self.tag_p)))
            rec = self.single[int(rng.integers(len(self.single)))] if k == 0 else _GENEVAL_MAKERS[k - 1](rng)
            if rec["prompt"] not in self.held_out:
                return "geneval", rec


def render_batch(sampler: CaptionSampler, rng: np.random.Generator, n: int,
                 world: WorldConfig, labels: bool = False, letters: bool = False):
    """``n`` (prompt, image) pairs; images float [n, 3, H, W] in [-1, 1]. With ``labels``, also the
    renderer's per-cell labels, float [n, len(LABEL_CHANNELS), H/4, W/4] in [0, 1] (same images:
    the label maps come from the same draw; with ``letters``, followed by the LETTER_CHANNELS)."""
    prompts, images, maps = [], [], []
    for _ in range(n):
        fmt, rec = sampler(rng)
        prompts.append(rec["prompt"])
        scene = scene_for_record(rec, fmt, rng, world)
        if labels:
            img, lab = render_with_labels(scene, world, grid=world.image_size // 4, letters=letters)
            maps.append(lab)
        else:
            img = render(scene, world)
        images.append(img)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if labels:
        return prompts, x, torch.from_numpy(np.stack(maps))
    return prompts, x


# ---------------------------------------------------------------------------------------- schedule

def lr_at(step: int, total: int, peak: float, warmup: int, schedule: str = "cosine",
          decay_fraction: float = 0.2) -> float:
    """Learning rate at ``step`` (counted from 0) of ``total``: linear warm-up to ``peak``, then

    * ``cosine``: cosine decay to 10% of ``peak`` at ``total``;
    * ``wsd`` (warm-up–stable–decay; Hu et al. 2024, MiniCPM §4): ``peak`` until
      ``total·(1 − decay_fraction)``, then linear decay to 0 at ``total``. Runs of different lengths
      share their stable part, so their learning curves compare.

    Raises:
        ValueError: unknown ``schedule``.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "wsd":
        start = total * (1 - decay_fraction)
        return peak if step < start else peak * max(0.0, (total - step) / max(1e-9, total - start))
    if schedule != "cosine":
        raise ValueError(f"unknown schedule '{schedule}'; allowed: cosine, wsd")
    frac = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, frac))))


def zero_init_adaln(transformer: torch.nn.Module) -> int:
    """adaLN-Zero (Peebles & Xie 2023, DiT §3.2): zero the weights and biases of every adaptive-norm
    modulation linear (shift, scale and gate of each double- and single-stream block and of
    ``norm_out``) and of ``proj_out``, so that every block starts as the identity and the model
    predicts v = 0. Returns the number of parameters zeroed."""
    from diffusers.models.normalization import (
        AdaLayerNormContinuous,
        AdaLayerNormZero,
        AdaLayerNormZeroSingle,
    )

    linears = [m.linear for m in transformer.modules()
               if isinstance(m, AdaLayerNormZero | AdaLayerNormZeroSingle | AdaLayerNormContinuous)]
    linears.append(transformer.proj_out)
    n = 0
    with torch.no_grad():
        for lin in linears:
            for p in lin.parameters():
                p.zero_()
                n += p.numel()
    return n


def object_weighted_loss(err: torch.Tensor, maps: torch.Tensor, lam: float) -> torch.Tensor:
    """Flow loss with each latent cell weighted by its object content.

    Args:
        err: squared errors of packed latents, [N, T, 4·C] (T tokens of 2×2 cells × C channels).
        maps: the renderer's label maps of the same images, [N, L ≥ len(LABEL_CHANNELS), h, w] in [0, 1].
        lam: λ ≥ 0.

    Returns:
        mean(err · w) / mean(w), with w = 1 + λ·cover per cell and cover = min(1, object-class
        coverage + sign-ink coverage) of the cell; λ = 0 gives the plain mean.
    """
    c = err.shape[-1] // 4
    ink = len(LABEL_CHANNELS) - 1  # "sign:ink" (letter channels, if any, come after it)
    cover = (maps[:, : len(CLASSES)].sum(1, keepdim=True) + maps[:, ink:ink + 1]).clamp(0, 1)
    wgt = 1 + lam * pack_labels(cover.expand(-1, c, -1, -1).contiguous())
    return (err * wgt).mean() / wgt.mean()


def letter_targets(letter_maps: torch.Tensor, min_ink: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token letter classes from the renderer's letter channels.

    Args:
        letter_maps: [N, A, h, w] ink coverage in [0, 1] of each of the A letters of the OCR alphabet
            over the latent cells (``render_with_labels(letters=True)``'s last A channels).
        min_ink: a token counts when the ink of all letters covers at least this share of it.

    Returns:
        ``(target, mask)``: long [N, T] index of the letter with the most ink in each token (T =
        (h/2)(w/2) tokens of 2×2 cells, in FLUX's packing order) and bool [N, T], true where the
        token has enough ink.
    """
    n, a, h, w = letter_maps.shape
    per_token = letter_maps.view(n, a, h // 2, 2, w // 2, 2).mean(dim=(3, 5)).flatten(2).transpose(1, 2)  # [N, T, A]
    return per_token.argmax(-1), per_token.sum(-1) >= min_ink


def letter_loss(logits: torch.Tensor, letter_maps: torch.Tensor,
                min_ink: float) -> tuple[torch.Tensor, float, int] | None:
    """Cross-entropy of the letter head over the tokens that carry sign ink.

    Args:
        logits: [N, T, A] letter-head outputs for the T image tokens.
        letter_maps: [N, A, h, w] letter ink coverage (see :func:`letter_targets`).
        min_ink: see :func:`letter_targets`.

    Returns:
        ``(loss, accuracy, tokens)``: the mean cross-entropy over the counted tokens (a scalar with
        gradient), the head's top-1 accuracy on them and their number; None when no token of the
        batch carries enough ink.
    """
    target, mask = letter_targets(letter_maps, min_ink)
    if not bool(mask.any()):
        return None
    sel, tgt = logits[mask], target[mask]
    loss = torch.nn.functional.cross_entropy(sel, tgt)
    acc = (sel.detach().argmax(-1) == tgt).float().mean().item()
    return loss, acc, int(mask.sum())


def pack_labels(labels: torch.Tensor) -> torch.Tensor:
    """Label maps [N, L, h, w] → per-token targets [N, (h/2)(w/2), 4L], packed exactly as FLUX packs
    latents (``FluxPipeline._pack_latents``: 2×2 cells per token, channel-major)."""
    n, c, h, w = labels.shape
    x = labels.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // 2) * (w // 2), c * 4)


def _gen(seed: int, phase: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    rng = np.random.default_rng([seed, phase, step])
    g = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, g


# ---------------------------------------------------------------------------------------- trainer

class _OutOfTime(Exception):
    """The invocation's time budget (``max_seconds``) is spent; a checkpoint was written."""


class Pretrainer:
    """Runs both phases into ``out_dir`` (``checkpoint.pt``, ``cache/``, ``pipeline/``,
    ``pretrain.json``, ``log.jsonl``).

    ``max_seconds`` bounds the wall time of this invocation: once it has passed, the step in
    progress finishes, a checkpoint is written and :meth:`run` returns ``{"stopped": True, ...}``;
    running again resumes exactly (the same weights as one uninterrupted run). For machines lent
    in slots (a GPU for ten minutes at a time) and background jobs that must stop cleanly.
    :meth:`request_stop` (the CLI calls it on SIGINT and SIGTERM) stops the same way after the
    step in progress.

    Raises:
        UserError: ``out_dir`` holds a checkpoint of a different config (resume needs the same one).
    """

    def __init__(self, cfg: PretrainConfig, out_dir: str | Path, device: str = "cpu",
                 progress: Callable[[str, int, int, dict], None] | None = None,
                 max_seconds: float | None = None):
        self.cfg, self.out = cfg, Path(out_dir)
        self.deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self.stop_requested = False
        self.device = torch.device(device)
        self.progress = progress or (lambda *a: None)
        self.world = cfg.world.model_copy(update={"image_size": cfg.model.image_size})
        self.sampler = CaptionSampler(cfg.ocr_fraction, cfg.tag_weights)
        self.pipe = build_tiny_pipeline(cfg.model, seed=cfg.seed)
        if cfg.init == "adaln_zero":
            zero_init_adaln(self.pipe.transformer)
        if cfg.init_from:
            self._init_from(Path(cfg.init_from))
        self.labels: torch.Tensor | None = None
        self.align_head: torch.nn.Linear | None = None
        self.letter_head: torch.nn.Linear | None = None
        self._hidden: dict[str, torch.Tensor] = {}
        if cfg.align_weight > 0:
            self._attach_align_head()
        self.probe = DevProbe(cfg.probe, cfg.model.image_size, cfg.model.image_size, cfg.model.max_text_length) \
            if cfg.probe.every else None
        self.pipe.to(self.device)
        self.phase, self.step = PHASE_VAE, 0
        self.opt: torch.optim.Optimizer | None = None
        self.timing = {"vae_seconds": 0.0, "flow_seconds": 0.0, "encode_seconds": 0.0, "probe_seconds": 0.0}
        self.latents: torch.Tensor | None = None
        self.prompts: list[str] | None = None
        self.ema: dict[str, dict[str, torch.Tensor]] | None = None

    # ----------------------------------------------------------------------------- weight EMA
    _FLOW_MODELS = ("transformer", "text_encoder", "text_encoder_2")

    def _init_ema(self) -> None:
        """EMA copies of the flow-phase models' floating-point state, started from the current weights."""
        if self.cfg.ema_decay > 0 and self.ema is None:
            self.ema = {n: {k: v.detach().clone() for k, v in getattr(self.pipe, n).state_dict().items()
                            if v.is_floating_point()} for n in self._FLOW_MODELS}

    def _update_ema(self) -> None:
        """θ_ema ← d·θ_ema + (1 − d)·θ with d = min(ema_decay, (1 + k)/(10 + k)) at step k (the usual
        warm-up, so the average is not dominated by the initial weights)."""
        if self.ema is None:
            return
        d = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for n in self._FLOW_MODELS:
                sd = getattr(self.pipe, n).state_dict()
                keys = list(self.ema[n])
                torch._foreach_lerp_([self.ema[n][k] for k in keys], [sd[k].detach() for k in keys], 1.0 - d)

    def _swap_in_ema(self) -> None:
        """Load the EMA weights into the pipeline (for export / the final save)."""
        if self.ema is not None:
            for n in self._FLOW_MODELS:
                getattr(self.pipe, n).load_state_dict(self.ema[n], strict=False)

    def _attach_align_head(self) -> None:
        """The label-alignment head (a linear map from the chosen block's image tokens to 4 cells ×
        the label channels) and a forward hook that keeps that block's image-token output while
        gradients are on (training); the head is not part of the pipeline and is never exported."""
        tr = self.pipe.transformer
        blocks = [*tr.transformer_blocks, *tr.single_transformer_blocks]
        if self.cfg.align_block >= len(blocks):
            raise UserError(f"align_block: {self.cfg.align_block} is out of range; allowed: 0–{len(blocks) - 1}")
        dim = tr.config.num_attention_heads * tr.config.attention_head_dim
        g = torch.Generator().manual_seed(self.cfg.seed + 7)
        n_labels = len(LABEL_CHANNELS) + (len(LETTER_CHANNELS) if self.cfg.align_letters else 0)
        self.align_head = torch.nn.Linear(dim, 4 * n_labels)
        with torch.no_grad():
            self.align_head.weight.copy_(torch.randn(self.align_head.weight.shape, generator=g) * dim ** -0.5)
            self.align_head.bias.zero_()
        if self.cfg.letter_weight > 0:
            self.letter_head = torch.nn.Linear(dim, len(LETTER_CHANNELS))
            with torch.no_grad():
                self.letter_head.weight.copy_(torch.randn(self.letter_head.weight.shape, generator=g) * dim ** -0.5)
                self.letter_head.bias.zero_()
        store = self._hidden

        def keep(module, args, output):  # a closure, not a method: deep copies of the model stay light
            if torch.is_grad_enabled():
                store["h"] = output[1]

        blocks[self.cfg.align_block].register_forward_hook(keep)

    def _init_from(self, path: Path) -> None:
        """Copy the weights of ``init_components`` (and, with the VAE, its shift/scaling) from a saved pipeline.

        Raises:
            UserError: the directory is not a pipeline with the configured component shapes.
        """
        from diffusers import FluxPipeline

        from .spec import quiet_hf_progress

        quiet_hf_progress()
        if not (path / "model_index.json").is_file():
            raise UserError(f"init_from: cannot start from '{path}': no model_index.json there (not a saved pipeline)")
        try:
            src = FluxPipeline.from_pretrained(str(path))
            for n in self.cfg.init_components:
                getattr(self.pipe, n).load_state_dict(getattr(src, n).state_dict())
        except (OSError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"init_from: cannot start from '{path}': {first}") from None
        self.pipe.vae.register_to_config(shift_factor=src.vae.config.shift_factor,
                                         scaling_factor=src.vae.config.scaling_factor)
        self._init_vae_factors = (src.vae.config.shift_factor, src.vae.config.scaling_factor)

    # ----------------------------------------------------------------------------- checkpointing
    @property
    def ckpt_path(self) -> Path:
        """``<out>/checkpoint.pt``, the resumable training state."""
        return self.out / "checkpoint.pt"

    def _trainable(self) -> list[torch.nn.Parameter]:
        p = self.pipe
        if self.phase == PHASE_VAE:
            return list(p.vae.parameters())
        head = [p_ for h in (self.align_head, self.letter_head) if h is not None for p_ in h.parameters()]
        return [*p.transformer.parameters(), *p.text_encoder.parameters(), *p.text_encoder_2.parameters(), *head]

    def _make_optimizer(self) -> None:
        if self.phase == PHASE_VAE:
            self.opt = torch.optim.AdamW(self._trainable(), lr=self.cfg.vae_lr, weight_decay=self.cfg.weight_decay)
        else:
            self.opt = torch.optim.AdamW(self._trainable(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                         betas=(0.9, self.cfg.adam_beta2))

    def save_checkpoint(self) -> None:
        """Atomically write weights, optimizer, EMA, phase, step and timing to :attr:`ckpt_path`."""
        p = self.pipe
        state = {"config": self.cfg.model_dump(mode="json"), "phase": self.phase, "step": self.step,
                 "timing": self.timing,
                 "models": {n: getattr(p, n).state_dict() for n in ("vae", "text_encoder", "text_encoder_2",
                                                                    "transformer")},
                 "vae_factors": (p.vae.config.shift_factor, p.vae.config.scaling_factor),
                 "optimizer": self.opt.state_dict() if self.opt else None,
                 "ema": self.ema,
                 "align_head": self.align_head.state_dict() if self.align_head is not None else None,
                 "letter_head": self.letter_head.state_dict() if self.letter_head is not None else None}
        save_checkpoint_file(self.ckpt_path, state)

    def load_checkpoint(self) -> bool:
        """Restore :attr:`ckpt_path` if it exists; returns whether it did.

        Raises:
            UserError: the checkpoint was written with another configuration (fields added later
                match when they hold their default), or holds more than tensors and plain containers
                (loaded with ``weights_only=True``).
        """
        if not self.ckpt_path.exists():
            return False
        state = load_checkpoint_file(self.ckpt_path, map_location=self.device)
        saved, current = state["config"], self.cfg.model_dump(mode="json")
        defaults = PretrainConfig().model_dump(mode="json")
        # fields added after the checkpoint was written match when they hold their default
        saved = {**{k: defaults[k] for k in current if k not in saved}, **saved}
        # settings that do not change the weights may differ
        for k in ("probe", "checkpoint_every"):
            saved[k] = current[k]
        # a wsd run may be extended or shortened, or given another decay fraction (a decay branch of
        # chosen length from the current step), while it has not started decaying under either setting
        if (current["schedule"] == saved["schedule"] == "wsd" and state["phase"] == PHASE_FLOW
                and state["step"] <= saved["steps"] * (1 - saved["decay_fraction"])
                and state["step"] <= current["steps"] * (1 - current["decay_fraction"])):
            saved["steps"], saved["decay_fraction"] = current["steps"], current["decay_fraction"]
        diff = sorted(k for k in current if saved.get(k) != current[k])
        if diff:
            raise UserError(f"{self.out}: holds a checkpoint of a different pretraining config (differs in "
                            f"{', '.join(diff)}); use a new --out or the same settings to resume")
        for n, sd in state["models"].items():
            getattr(self.pipe, n).load_state_dict(sd)
        self.pipe.vae.register_to_config(shift_factor=state["vae_factors"][0], scaling_factor=state["vae_factors"][1])
        self.phase, self.step, self.timing = state["phase"], state["step"], state["timing"]
        self._make_optimizer()
        if state["optimizer"] is not None:
            self.opt.load_state_dict(state["optimizer"])
        self.ema = state.get("ema")
        if self.align_head is not None and state.get("align_head") is not None:
            self.align_head.load_state_dict(state["align_head"])
        if self.letter_head is not None and state.get("letter_head") is not None:
            self.letter_head.load_state_dict(state["letter_head"])
        return True

    def export(self, dest: str | Path) -> dict:
        """Write the current checkpoint's weights as a ``save_pretrained`` pipeline in ``dest``
        (to look at a run in progress); returns ``{"phase", "step"}``.

        Raises:
            UserError: no checkpoint in the output directory.
        """
        if not self.load_checkpoint():
            raise UserError(f"{self.out}: no checkpoint.pt to export")
        from .spec import quiet_hf_progress

        quiet_hf_progress()
        self._swap_in_ema()
        self.pipe.to("cpu").save_pretrained(dest)
        return {"phase": ("vae", "flow")[self.phase], "step": self.step, "ema": self.ema is not None}

    def _log(self, row: dict) -> None:
        with open(self.out / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    # ----------------------------------------------------------------------------- phases
    def run(self) -> dict:
        """Run (or resume) both phases; returns the summary written to ``pretrain.json``."""
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.load_checkpoint()
        if not resumed:
            self._make_optimizer()
        try:
            if self.phase == PHASE_VAE:
                self._vae_phase()
                self.phase, self.step = PHASE_FLOW, 0
                self._prepare_pool()
                self._make_optimizer()
                self.save_checkpoint()
            self._prepare_pool()
            self._flow_phase()
        except _OutOfTime:
            return {"stopped": True, "phase": "vae" if self.phase == PHASE_VAE else "flow", "step": self.step,
                    "timing": self.timing}
        return self._finish()

    def request_stop(self) -> None:
        """Stop after the step in progress, with a checkpoint (safe to call from a signal handler)."""
        self.stop_requested = True

    def _check_time(self) -> None:
        """After a step: past the deadline or asked to stop, checkpoint and stop (:class:`_OutOfTime`)."""
        if self.stop_requested or (self.deadline is not None and time.monotonic() >= self.deadline):
            self.save_checkpoint()
            raise _OutOfTime

    def _vae_phase(self) -> None:
        cfg, vae = self.cfg, self.pipe.vae
        vae.train()
        while self.step < cfg.vae_steps:
            t0 = time.perf_counter()
            rng, g = _gen(cfg.seed, PHASE_VAE, self.step)
            _, x = render_batch(self.sampler, rng, cfg.vae_batch, self.world)
            x = x.to(self.device)
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(self.device)
            x_hat = vae.decode(z).sample
            mse = (x_hat - x).pow(2).mean()
            kl = post.kl().mean() / z[0].numel()
            loss = mse + cfg.kl_weight * kl * z[0].numel()
            lr = lr_at(self.step, cfg.vae_steps, cfg.vae_lr, cfg.warmup)
            self._update(loss, lr)
            self.step += 1
            self.timing["vae_seconds"] += time.perf_counter() - t0
            row = {"phase": "vae", "step": self.step, "loss": loss.item(), "mse": mse.item(),
                   "kl_per_dim": kl.item(), "lr": lr}
            self.progress("vae", self.step, cfg.vae_steps, row)
            if self.step % 20 == 0 or self.step == cfg.vae_steps:
                self._log(row)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.vae_steps:
                self.save_checkpoint()
            if self.step < cfg.vae_steps:
                self._check_time()

    def _update(self, loss: torch.Tensor, lr: float) -> float:
        if not torch.isfinite(loss):
            raise UserError(f"pretraining diverged: non-finite loss at phase {self.phase} step {self.step}")
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self._trainable(), self.cfg.grad_clip)
        self.opt.step()
        return float(norm)

    def _prepare_pool(self) -> None:
        """Render ``pool_size`` scenes (stream (seed, 2, i)) and cache their VAE posterior means;
        set the VAE's shift/scaling factors from the pool statistics (first time only)."""
        if self.latents is not None:
            return
        cfg = self.cfg
        cache = self.out / "cache" / "pool.pt"
        want_labels = cfg.align_weight > 0 or cfg.object_weight > 0
        if cache.exists():
            data = load_checkpoint_file(cache)
            n_labels = len(LABEL_CHANNELS) + (len(LETTER_CHANNELS) if cfg.align_letters else 0)
            cached = data.get("labels")
            if not want_labels or (cached is not None and cached.shape[1] == n_labels):
                self.latents, self.prompts = data["latents"], data["prompts"]
                self.labels = data.get("labels")
                self.pipe.vae.register_to_config(shift_factor=data["shift"], scaling_factor=data["scale"])
                return
        t0 = time.perf_counter()
        vae = self.pipe.vae.eval()
        lat, prompts, maps = [], [], []
        chunk = 256
        with torch.no_grad():
            for start in range(0, cfg.pool_size, chunk):
                rng, _ = _gen(cfg.seed, 2, start)
                out = render_batch(self.sampler, rng, min(chunk, cfg.pool_size - start), self.world, labels=want_labels,
                                   letters=cfg.align_letters)
                p, x = out[0], out[1]
                if want_labels:
                    maps.append((out[2] * 255).round().to(torch.uint8))
                lat.append(vae.encode(x.to(self.device)).latent_dist.mean.cpu())
                prompts.extend(p)
                self.progress("encode", min(start + chunk, cfg.pool_size), cfg.pool_size, {})
        latents = torch.cat(lat)
        self.labels = torch.cat(maps) if want_labels else None
        if cfg.init_from and cfg.vae_steps == 0:  # the VAE is unchanged: keep the scaling the model learnt with
            shift, scale = self._init_vae_factors
        else:
            shift, scale = latents.mean().item(), 1.0 / latents.std().item()
        self.pipe.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
        self.latents, self.prompts = (latents - shift) * scale, prompts
        self.timing["encode_seconds"] += time.perf_counter() - t0
        import io
        buf = io.BytesIO()
        torch.save({"latents": self.latents, "prompts": self.prompts, "shift": shift, "scale": scale,
                    "labels": self.labels}, buf)
        atomic_write_bytes(cache, buf.getvalue())

    def _flow_phase(self) -> None:
        cfg, pipe = self.cfg, self.pipe
        pipe.transformer.train(), pipe.text_encoder.train(), pipe.text_encoder_2.train()
        h = w = self.latents.shape[-1]
        c = self.latents.shape[1]
        img_ids = pipe._prepare_latent_image_ids(cfg.batch, h // 2, w // 2, self.device, torch.float32)
        self._init_ema()
        while self.step < cfg.steps:
            t0 = time.perf_counter()
            rng, g = _gen(cfg.seed, PHASE_FLOW, self.step)
            idx = rng.integers(len(self.prompts), size=cfg.batch)
            x0 = self.latents[torch.from_numpy(idx)]
            noise = torch.randn(x0.shape, generator=g)
            sigma = torch.sigmoid(torch.randn(cfg.batch, generator=g))
            captions = [self.prompts[i] for i in idx]
            if cfg.caption_dropout > 0:
                drop = rng.random(cfg.batch) < cfg.caption_dropout
                captions = ["" if d else c_ for c_, d in zip(captions, drop, strict=True)]
            s = sigma.view(-1, 1, 1, 1)
            x_t = ((1 - s) * x0 + s * noise).to(self.device)
            target = (noise - x0).to(self.device)
            prompt_embeds, pooled, text_ids = pipe.encode_prompt(
                captions, None, device=self.device,
                max_sequence_length=cfg.model.max_text_length)
            pred = pipe.transformer(
                hidden_states=pipe._pack_latents(x_t, cfg.batch, c, h, w), timestep=sigma.to(self.device),
                guidance=(torch.ones(cfg.batch, device=self.device) if cfg.model.guidance_embeds else None),
                pooled_projections=pooled, encoder_hidden_states=prompt_embeds, txt_ids=text_ids,
                img_ids=img_ids, return_dict=False)[0]
            packed_target = pipe._pack_latents(target, cfg.batch, c, h, w)
            if cfg.model_guidance > 0 and self.step >= cfg.model_guidance_start:
                packed_target = packed_target + cfg.model_guidance * self._guidance_term(
                    pred, x_t, sigma, captions, img_ids, c, h, w)
            err = (pred - packed_target).pow(2)
            flow_loss = err.mean()
            loss, align = flow_loss, None
            if cfg.object_weight > 0:
                maps = (self.labels[torch.from_numpy(idx)].float() / 255.0).to(self.device)
                loss = object_weighted_loss(err, maps, cfg.object_weight)
            letter = None
            if self.align_head is not None and (cfg.align_steps is None or self.step < cfg.align_steps):
                hidden = self._hidden.pop("h")
                maps = self.labels[torch.from_numpy(idx)].float() / 255.0
                logits = self.align_head(hidden)
                labels = pack_labels(maps).to(self.device)
                align = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
                loss = loss + cfg.align_weight * align
                if self.letter_head is not None:
                    letter = letter_loss(self.letter_head(hidden), maps[:, len(LABEL_CHANNELS):].to(self.device),
                                         cfg.letter_min_ink)
                    if letter is not None:
                        loss = loss + cfg.letter_weight * letter[0]
            lr = lr_at(self.step, cfg.steps, cfg.lr, cfg.warmup, cfg.schedule, cfg.decay_fraction)
            norm = self._update(loss, lr)
            self._update_ema()
            self.step += 1
            self.timing["flow_seconds"] += time.perf_counter() - t0
            row = {"phase": "flow", "step": self.step, "loss": flow_loss.item(), "grad_norm": norm, "lr": lr}
            if align is not None:
                row["align_loss"] = align.item()
            if letter is not None:
                row["letter_loss"], row["letter_acc"], row["letter_tokens"] = letter[0].item(), letter[1], letter[2]
            self.progress("flow", self.step, cfg.steps, row)
            if self.step % 20 == 0 or self.step == cfg.steps:
                self._log(row)
            every = cfg.probe.every
            if self.probe is not None and (self.step * cfg.batch) // every > ((self.step - 1) * cfg.batch) // every:
                self.run_probe()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
            if self.step < cfg.steps:
                self._check_time()

    def _guidance_term(self, pred: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, captions: list[str],
                       img_ids: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
        """Model guidance's stop-gradient direction sg(v(x_t, c) − v(x_t, ∅)) (Tang et al. 2025, arXiv 2502.12154, the MG objective ε' = ε + w·sg(ε_c − ε_∅), here with velocities).

        Args:
            pred: (B, tokens, channels) the packed velocity just predicted for the batch's captions.
            x_t: (B, C, H, W) noisy latents; sigma: (B,) noise levels; captions: the batch's prompts ("" = dropped).

        Returns:
            (B, tokens, channels), zero on the rows whose caption was dropped (they keep the plain target).
            The unconditional velocity comes from one extra forward of the current weights without
            gradient (the paper uses EMA weights; here the EMA trails by ~1,000 steps).
        """
        pipe, cfg = self.pipe, self.cfg
        keep = torch.tensor([bool(t) for t in captions], device=pred.device)
        if not keep.any():
            return torch.zeros_like(pred)
        with torch.no_grad():  # no gradient: the label head's hook keeps the captioned forward's activations
            embeds, pooled, text_ids = pipe.encode_prompt(
                [""] * len(captions), None, device=self.device, max_sequence_length=cfg.model.max_text_length)
            v_uncond = pipe.transformer(
                hidden_states=pipe._pack_latents(x_t, len(captions), c, h, w), timestep=sigma.to(self.device),
                guidance=(torch.ones(len(captions), device=self.device) if cfg.model.guidance_embeds else None),
                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                img_ids=img_ids, return_dict=False)[0]
        return (pred.detach() - v_uncond) * keep.view(-1, 1, 1).to(pred.dtype)

    def run_probe(self) -> dict:
        """Score the dev probe with the EMA weights (the current ones without EMA), append the row
        ``{"images", "step", "summary"}`` to ``probe.jsonl`` and save the first probe images as
        ``probe/images-<K>k.png``; returns the row."""
        import copy

        t0 = time.perf_counter()
        pipe = copy.deepcopy(self.pipe)
        if self.ema is not None:
            for n in self._FLOW_MODELS:
                getattr(pipe, n).load_state_dict(self.ema[n], strict=False)
        summary, _ = self.probe.run(pipe, self.device)
        images = self.cfg.images_before + self.step * self.cfg.batch
        row = {"images": images, "step": self.step, "ema": self.ema is not None, "summary": summary}
        with open(self.out / "probe.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        from PIL import Image

        tiles = self.probe.last_images[:96]
        cols = 12
        rows_ = (len(tiles) + cols - 1) // cols
        size = tiles.shape[1]
        sheet = np.full((rows_ * (size + 2), cols * (size + 2), 3), 255, np.uint8)
        for i, t in enumerate(tiles):
            r, c = divmod(i, cols)
            sheet[r * (size + 2):r * (size + 2) + size, c * (size + 2):c * (size + 2) + size] = t
        (self.out / "probe").mkdir(exist_ok=True)
        Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(
            self.out / "probe" / f"images-{images // 1000:05d}k.png")
        self.timing["probe_seconds"] += time.perf_counter() - t0
        self.progress("probe", self.step, self.cfg.steps, {"probe": summary, "images": images})
        return row

    def _finish(self) -> dict:
        pipe, cfg = self.pipe, self.cfg
        self._swap_in_ema()
        target = self.out / "pipeline"
        tmp = self.out / "pipeline.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.to("cpu")
        from .spec import quiet_hf_progress

        quiet_hf_progress()
        pipe.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        t = self.timing
        summary = {
            "config": cfg.model_dump(mode="json"),
            "parameters": {n: count_parameters(getattr(pipe, n))
                           for n in ("vae", "text_encoder", "text_encoder_2", "transformer")},
            "vae_factors": {"shift_factor": pipe.vae.config.shift_factor,
                            "scaling_factor": pipe.vae.config.scaling_factor},
            "timing": t,
            "throughput_images_per_s": {
                "vae": cfg.vae_steps * cfg.vae_batch / t["vae_seconds"] if t["vae_seconds"] else None,
                "flow": cfg.steps * cfg.batch / t["flow_seconds"] if t["flow_seconds"] else None},
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "device": str(self.device), "torch": torch.__version__},
        }
        write_json(self.out / "pretrain.json", summary)
        return summary
