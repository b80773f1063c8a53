"""Model registry entries: where a backbone's weights come from and its sampling defaults.

Built-ins: ``tiny-shapes`` (the embedded backbone, weights shipped inside the package, the default
``--model``), ``flux-dev`` (``black-forest-labs/FLUX.1-dev``) and ``sd3.5-medium``
(``stabilityai/stable-diffusion-3.5-medium``, Flow-GRPO's settings: 512², 10 rollout / 40 evaluation
steps, CFG 4.5) from the Hugging Face Hub, for users with network access and a GPU. Third-party packages register more :class:`ModelSpec` objects
through the ``alignbench.models`` entry-point group.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..config import StrictModel
from ..errors import UserError
from ..registry import models

DEFAULT_MODEL = "tiny-shapes"


class ModelSpec(StrictModel):
    """A loadable backbone and its defaults (specs/algorithms.md §0 and §5 for FLUX's numbers)."""

    name: str
    description: str
    domain: Literal["shapes", "natural"] = Field(description="which prompt set/scorer of a task applies")
    family: Literal["flux", "sd3"] = Field("flux", description="adapter and LoRA target set: flux "
                                           "(FluxPipeline) or sd3 (StableDiffusion3Pipeline)")
    source: str = Field(description="Hub repo id, local directory, or 'package:<dir>' inside alignbench.models")
    height: int = Field(ge=16)
    width: int = Field(ge=16)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_sequence_length: int = Field(512, ge=1, le=512, description="T5-side prompt tokens")
    guidance_scale: float = Field(3.5, description="guidance-embedding value (FLUX.1-dev: 3.5)")
    true_cfg_scale: float = Field(1.0, ge=1.0, description="classifier-free guidance scale w with the empty "
                                  "negative prompt (FluxPipeline's true_cfg_scale; 1 = off, 2 NFE per sample "
                                  "and step otherwise); used by rollouts and evaluation alike")
    train_steps: int = Field(ge=1, description="sampling steps of training rollouts")
    eval_steps: int = Field(ge=1, description="ODE steps of the evaluation protocol")
    random: bool = Field(False, description="build the published architecture with random weights and random "
                         "text embeddings instead of loading weights (benchmarks; nothing is downloaded)")
    scale: float = Field(1.0, gt=0, le=1, description="random architectures: fraction of the transformer blocks "
                         "kept (same token count), so that the true shapes run scaled down on a CPU")
    revision: str | None = Field(None, description="weights revision: for a Hub repo id the git revision "
                                 "(branch, tag or commit) passed to from_pretrained; for shipped or local "
                                 "weights a label. Part of every run config, so that compare never matches "
                                 "runs made on other weights")

    def resolved_source(self) -> str:
        """The directory or repo id ``FluxPipeline.from_pretrained`` receives."""
        if self.source.startswith("package:"):
            return str(Path(str(resources.files("alignbench.models"))) / self.source.removeprefix("package:"))
        return self.source

    def load(self, device: str = "cpu"):
        """The backbone adapter with this model's weights on ``device``.

        Raises:
            UserError: the weights cannot be found or downloaded (names the source; for a Hub repo,
                says that the Hub must be reachable).
        """
        import torch
        from diffusers import FluxPipeline, StableDiffusion3Pipeline

        from .backbone import FluxBackbone, SD3Backbone

        pipeline_cls, adapter = {"flux": (FluxPipeline, FluxBackbone),
                                 "sd3": (StableDiffusion3Pipeline, SD3Backbone)}[self.family]

        quiet_hf_progress()
        if self.random:
            from .random_arch import build_random_backbone

            backbone = build_random_backbone(self.family, self.height, self.width, getattr(torch, self.dtype), device,
                                             self.scale, guidance_scale=self.guidance_scale,
                                             true_cfg_scale=self.true_cfg_scale,
                                             max_sequence_length=self.max_sequence_length)
            backbone.name, backbone.domain = self.name, self.domain
            return backbone
        src = self.resolved_source()
        local = Path(src).is_dir()
        try:
            hub = {} if local or self.revision is None else {"revision": self.revision}
            pipe = pipeline_cls.from_pretrained(src, dtype=getattr(torch, self.dtype), **hub)
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line naming the source
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if local:
                raise UserError(f"model '{self.name}': cannot load the pipeline in '{src}': {reason}") from None
            raise UserError(f"model '{self.name}': cannot load '{src}' from the Hugging Face Hub ({type(exc).__name__}); "
                            "it needs network access to huggingface.co (and the licence accepted for gated repos), "
                            "or a local copy: --set model.source=/path/to/dir") from None
        backbone = adapter(pipe, self.height, self.width, self.max_sequence_length, self.guidance_scale, device,
                                true_cfg_scale=self.true_cfg_scale)
        backbone.name, backbone.domain = self.name, self.domain
        return backbone


def quiet_hf_progress() -> None:
    """Silence diffusers'/transformers' own loading and saving progress bars (alignbench shows its own)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()  # e.g. "Couldn't connect to the Hub": alignbench says it in one line
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


models.register("tiny-shapes", ModelSpec(
    name="tiny-shapes", domain="shapes", source="package:weights/tiny-shapes", height=64, width=64,
    description="embedded tiny FLUX (FluxTransformer2DModel + AutoencoderKL + CLIP/T5 text encoders) "
                "pretrained on ShapesWorld; runs on a CPU",
    max_sequence_length=20, guidance_scale=1.0, train_steps=10, eval_steps=20, revision="v2d"))
models.register("flux-dev", ModelSpec(
    name="flux-dev", domain="natural", source="black-forest-labs/FLUX.1-dev", height=512, width=512,
    dtype="bfloat16", description="FLUX.1-dev (Black Forest Labs, 12B) from the Hugging Face Hub; needs a GPU",
    max_sequence_length=512, guidance_scale=3.5, train_steps=6, eval_steps=28))
models.register("sd3.5-medium", ModelSpec(
    name="sd3.5-medium", domain="natural", family="sd3", source="stabilityai/stable-diffusion-3.5-medium",
    height=512, width=512, dtype="bfloat16",
    description="Stable Diffusion 3.5 Medium (Stability AI, 2.5B MM-DiT) from the Hugging Face Hub, Flow-GRPO's "
                "main backbone; needs a GPU",
    max_sequence_length=256, guidance_scale=1.0, true_cfg_scale=4.5, train_steps=10, eval_steps=40))
models.register("flux-dev-random", ModelSpec(
    name="flux-dev-random", domain="natural", source="random:flux", random=True, height=512, width=512,
    dtype="bfloat16", description="FLUX.1-dev's transformer config with random weights and random text embeddings "
    "(no download; for bench); --set model.scale=… keeps a fraction of the blocks",
    max_sequence_length=512, guidance_scale=3.5, train_steps=6, eval_steps=28))
models.register("sd35m-random", ModelSpec(
    name="sd35m-random", domain="natural", family="sd3", source="random:sd3", random=True, height=512, width=512,
    dtype="bfloat16", description="SD3.5-Medium's transformer config with random weights and random text "
    "embeddings (no download; for bench); --set model.scale=… keeps a fraction of the blocks",
    max_sequence_length=256, guidance_scale=1.0, true_cfg_scale=4.5, train_steps=10, eval_steps=40))


def get_model(name: str | ModelSpec, **overrides) -> ModelSpec:
    """The registered :class:`ModelSpec` ``name`` (or a dotted path), with field overrides applied.

    Raises:
        UnknownNameError: unknown name (lists the known ones).
        ConfigError: an override is invalid (names the field).
    """
    from ..config import validate

    spec = name if isinstance(name, ModelSpec) else models.get(name)
    if not isinstance(spec, ModelSpec):
        raise UserError(f"model '{name}' is a {type(spec).__name__}, not a ModelSpec")
    if overrides:
        spec = validate(ModelSpec, {**spec.model_dump(), **overrides}, prefix="model")
    return spec
