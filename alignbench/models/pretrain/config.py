"""Pretraining configuration: :class:`PretrainConfig`, the phases and the components."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ...config import StrictModel
from ...world.scene import WorldConfig
from ..tiny import TinyFluxConfig
from .probe import ProbeConfig

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

