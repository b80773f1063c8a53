"""Natural-image reward models with published weights: PickScore, HPS v2.1, ImageReward, CLIP score
and the LAION aesthetic predictor (specs/rewards_metrics.md, "Natural-image rewards";
../shared/notes/real_world.md for the loading facts).

Every reward loads its published weights by Hub id at a pinned revision (``reward.revision``
overrides it, ``reward.source=DIR`` loads a local copy laid out as :class:`RewardOptions` says), on
the device and in the dtype given, scores in batches of ``reward.batch_size``, and returns one key
named after the reward. Where the two reference implementations (Flow-GRPO, TMPO) normalise
differently, ``reward.formula`` names the variant; the first listed is the default.

Packages: ``image-reward`` and ``hpsv2`` do not install next to this stack (pinned timm 0.6.13,
OpenAI ``clip`` needing ``pkg_resources``, transformers-4-only APIs; ``pytest==7.2.0``), so their
weights are loaded through the libraries they wrap: transformers' BLIP classes (ImageReward) and
``open_clip`` (HPS v2.1). Nothing here is imported until a reward is asked for.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from ..config import StrictModel
from ..errors import ConfigError, UserError
from .base import Reward, to_uint8_images

#: OpenAI CLIP normalisation (CLIP, HPS v2, ImageReward's BLIP preprocessing).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class RewardOptions(StrictModel):
    """The ``reward.*`` section of a run config (``--set reward.source=DIR`` …).

    A local ``source`` directory holds what the Hub repositories hold, flattened into one folder:
    pickscore, clipscore: a ``save_pretrained`` CLIP model with its processor; aesthetic: the same
    plus ``aesthetic-model.pth``; hpsv2: ``HPS_v2.1_compressed.pt`` (and, for a non-ViT-H-14
    architecture, ``open_clip_config.json`` with its ``model_cfg``); imagereward: ``ImageReward.pt``,
    ``med_config.json`` and a BERT tokenizer's files (and, for a non-ViT-L/16 vision tower,
    ``vision_config.json``).
    """

    source: str | None = Field(None, description="local directory (or another Hub repo id) instead of the "
                               "reward's published weights")
    revision: str | None = Field(None, description="Hub git revision instead of the pinned one")
    device: str | None = Field(None, description="torch device of the reward model; default: the run's device")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="reward model dtype")
    batch_size: int = Field(16, ge=1, description="images per reward forward")
    formula: str | None = Field(None, description="normalisation variant (per reward; default: the first)")
    sources: dict[str, str] = Field(default_factory=dict, description="multi-reward tasks: a local directory per "
                                    "component reward, e.g. {pickscore: DIR1, hpsv2: DIR2}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _features(out: Any) -> torch.Tensor:
    """Projected CLIP features from ``get_*_features`` (a tensor in transformers 4, an output object
    whose ``pooler_output`` is the projection in transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class PretrainedReward(Reward):
    """Base of the natural-image rewards: source resolution, one-line load errors, batching.

    Subclasses set :attr:`name`, :attr:`repo`, :attr:`pinned`, :attr:`formulas` and implement
    :meth:`_load` and :meth:`_score_batch`.

    Args:
        options: the ``reward`` section (:class:`RewardOptions`, or a dict of its fields).

    Raises:
        ConfigError: ``options.formula`` is not one of :attr:`formulas` (names the allowed ones).
        UserError: the weights cannot be loaded (one line naming the repository or directory).
    """

    name: ClassVar[str] = ""
    #: Hub repository of the weights and its pinned revision (None: the default branch; the
    #: revision actually loaded is recorded in :attr:`loaded_revision`)
    repo: ClassVar[str] = ""
    pinned: ClassVar[str | None] = None
    formulas: ClassVar[tuple[str, ...]] = ("default",)
    metadata_format = ""

    @classmethod
    def check_options(cls, options: RewardOptions | dict | None) -> RewardOptions:
        """The validated options for this reward (its own ``sources`` entry as ``source``), without
        loading anything; run configs are checked with it before a run starts.

        Raises:
            ConfigError: a bad field, or a formula this reward does not have (names the allowed ones).
        """
        opts = options if isinstance(options, RewardOptions) else RewardOptions.model_validate(options or {})
        if cls.name in opts.sources:
            opts = opts.model_copy(update={"source": opts.sources[cls.name]})
        formula = opts.formula or cls.formulas[0]
        if formula not in cls.formulas:
            raise ConfigError(f"reward.formula: '{formula}' is not a formula of reward '{cls.name}'; "
                              f"allowed: {', '.join(cls.formulas)}")
        return opts

    def __init__(self, options: RewardOptions | dict | None = None):
        opts = self.check_options(options)
        self.options = opts
        self.formula = opts.formula or self.formulas[0]
        self.device = torch.device(opts.device or "cpu")
        self.dtype = getattr(torch, opts.dtype)
        self.local = opts.source is not None and Path(opts.source).is_dir()
        if opts.source is not None and not self.local and (opts.source.startswith((".", "/", "~"))
                                                          or Path(opts.source).suffix):
            raise UserError(f"reward.source: '{opts.source}' is not a directory")
        self.where = opts.source or self.repo
        self.revision = None if self.local else (opts.revision or self.pinned)
        self.loaded_revision: str | None = None
        try:
            self._load()
        except (UserError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes one line naming the source
            if self.local:
                raise UserError(f"reward '{self.name}': cannot load the weights in '{self.where}': "
                                f"{_first_line(exc)}") from None
            raise UserError(f"reward '{self.name}': cannot load '{self.where}' from the Hugging Face Hub "
                            f"({type(exc).__name__}); it needs network access to huggingface.co, or a local copy: "
                            "--set reward.source=/path/to/dir") from None

    # -- loading helpers --------------------------------------------------------------------------
    def _hub_file(self, filename: str, repo: str | None = None) -> str:
        """Path of ``filename``: inside the local source directory, or downloaded from the Hub (from
        ``repo``, default the reward's own, at the reward's revision only for its own repo)."""
        if self.local:
            path = Path(self.where) / filename
            if not path.is_file():
                raise FileNotFoundError(f"{filename} is missing")
            return str(path)
        from huggingface_hub import hf_hub_download

        own = repo in (None, self.where)
        path = hf_hub_download(repo or self.where, filename, revision=self.revision if own else None)
        if own:
            self.loaded_revision = Path(path).parent.name  # the snapshot folder is the commit hash
        return path

    def _pretrained(self, cls: Any, repo: str | None = None, **kwargs: Any) -> Any:
        """``cls.from_pretrained`` of the local directory or ``repo`` (default: :attr:`where`)."""
        if self.local:
            return cls.from_pretrained(self.where, **kwargs)
        obj = cls.from_pretrained(repo or self.where, revision=self.revision if repo in (None, self.where) else None,
                                  **kwargs)
        self.loaded_revision = getattr(getattr(obj, "config", None), "_commit_hash", None) or self.loaded_revision
        return obj

    def _place(self, module: torch.nn.Module) -> torch.nn.Module:
        module.requires_grad_(False)
        return module.to(self.device, self.dtype).eval()

    def _load(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- scoring ----------------------------------------------------------------------------------
    def _score_batch(self, images: list, prompts: list[str]) -> torch.Tensor:  # pragma: no cover
        """float32 [n] scores of ``images`` (PIL RGB) against ``prompts``."""
        raise NotImplementedError

    @torch.no_grad()
    def score(self, images: Any, prompts: list[str], metadata: list[dict] | None = None) -> dict[str, torch.Tensor]:
        """{name: float32 [N]} for N images and N prompts (metadata is not used)."""
        from PIL import Image

        arrays = to_uint8_images(images)
        if len(arrays) != len(prompts):
            raise ValueError(f"{len(arrays)} images but {len(prompts)} prompts")
        out = []
        bs = self.options.batch_size
        for start in range(0, len(arrays), bs):
            pil = [Image.fromarray(a) for a in arrays[start:start + bs]]
            out.append(self._score_batch(pil, list(prompts[start:start + bs])).float().cpu())
        return {self.name: torch.cat(out) if out else torch.zeros(0)}


def clip_tokenizer_offline():
    """OpenAI CLIP's 49,408-token BPE tokenizer as a transformers ``CLIPTokenizer``, built with no
    network from the ``bpe_simple_vocab_16e6.txt.gz`` that ships inside open-clip-torch (the vocabulary
    is built as CLIP's ``SimpleTokenizer`` builds it: 256 byte symbols, the same with ``</w>``, the
    48,894 merges, then ``<|startoftext|>`` and ``<|endoftext|>``). For tiny offline CLIP models.

    Raises:
        UserError: open-clip-torch is not installed.
    """
    import gzip

    try:
        from open_clip.tokenizer import bytes_to_unicode, default_bpe
    except ImportError:
        raise UserError("clip_tokenizer_offline needs open-clip-torch: pip install 'alignbench[real]'") from None
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges), "<|startoftext|>",
             "<|endoftext|>"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)


# ------------------------------------------------------------------------------------------ CLIP
class _CLIPReward(PretrainedReward):
    """A ``transformers`` CLIP model and processor (images and texts processed separately)."""

    processor_repo: ClassVar[str | None] = None  # None: the model's own repo

    def _load(self) -> None:
        from transformers import AutoProcessor, CLIPModel

        self.model = self._place(self._pretrained(CLIPModel))
        repo = None if self.local else self.processor_repo
        try:  # the PIL backend reproduces transformers 4's preprocessing exactly (notes/real_world.md)
            self.processor = self._pretrained(AutoProcessor, repo, backend="pil")
        except TypeError:
            self.processor = self._pretrained(AutoProcessor, repo)

    def _embed(self, images: list, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised image and text features, float32 [n, D] each."""
        pix = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        txt = self.processor(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        img_f = _features(self.model.get_image_features(pixel_values=pix)).float()
        txt_f = _features(self.model.get_text_features(input_ids=txt["input_ids"].to(self.device),
                                                       attention_mask=txt["attention_mask"].to(self.device))).float()
        return (img_f / img_f.norm(dim=-1, keepdim=True), txt_f / txt_f.norm(dim=-1, keepdim=True))


class PickScoreReward(_CLIPReward):
    """PickScore (Kirstain et al., 2023): exp(logit_scale)·cos(image, text) of the fine-tuned CLIP-H.

    Formulas: ``flow_grpo`` (default) divides by 26 as Flow-GRPO's and TMPO's training reward does;
    ``tmpo`` clamps the logit scale to ±10 before the exponential (TMPO's scorer; identical for the
    published weights, whose scale is ln 100 ≈ 4.6), then divides by 26; ``raw`` is the paper's
    score (≈ 22 for FLUX.1-dev images).
    """

    name = "pickscore"
    keys = ("pickscore",)
    description = "PickScore (yuvalkirstain/PickScore_v1): exp(logit scale)·cos of a fine-tuned CLIP-H, ÷ 26 by default"
    repo = "yuvalkirstain/PickScore_v1"
    processor_repo = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    formulas = ("flow_grpo", "tmpo", "raw")

    def _score_batch(self, images: list, prompts: list[str]) -> torch.Tensor:
        img, txt = self._embed(images, prompts)
        scale = self.model.logit_scale.float()
        if self.formula == "tmpo":
            scale = scale.clamp(-10, 10)
        score = scale.exp() * (img * txt).sum(-1)
        return score if self.formula == "raw" else score / 26


class CLIPScoreReward(_CLIPReward):
    """CLIP score with OpenAI CLIP ViT-L/14: exp(logit_scale)·cos (≈ 100·cos); ``flow_grpo``
    (default) divides by 30 as Flow-GRPO's ``clip_score`` does, ``raw`` does not."""

    name = "clipscore"
    keys = ("clipscore",)
    description = "CLIP score (openai/clip-vit-large-patch14): exp(logit scale)·cos, ÷ 30 by default"
    repo = "openai/clip-vit-large-patch14"
    pinned = "32bd64288804d66eefd0ccbe215aa642df71cc41"
    formulas = ("flow_grpo", "raw")

    def _score_batch(self, images: list, prompts: list[str]) -> torch.Tensor:
        img, txt = self._embed(images, prompts)
        score = self.model.logit_scale.float().exp() * (img * txt).sum(-1)
        return score if self.formula == "raw" else score / 30


def aesthetic_mlp(width: int = 768) -> torch.nn.Sequential:
    """The LAION improved aesthetic predictor's head: Linear(width,1024) → Dropout(0.2) →
    Linear(1024,128) → Dropout(0.2) → Linear(128,64) → Dropout(0.1) → Linear(64,16) → Linear(16,1),
    no activations (christophschuhmann/improved-aesthetic-predictor; keys ``layers.<i>.*``)."""
    nn = torch.nn
    return nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


class AestheticReward(_CLIPReward):
    """LAION aesthetic score: the improved predictor's MLP on the L2-normalised CLIP ViT-L/14 image
    embedding (weights ``aesthetic-model.pth`` of ``trl-lib/ddpo-aesthetic-predictor``, the
    ``sac+logos+ava1-l14-linearMSE`` head as DDPO and Flow-GRPO use it). Raw score, ≈ 1–10."""

    name = "aesthetic"
    keys = ("aesthetic",)
    description = "LAION aesthetic predictor: linear MLP head on CLIP ViT-L/14 image embeddings (≈ 1–10)"
    repo = "openai/clip-vit-large-patch14"
    pinned = "32bd64288804d66eefd0ccbe215aa642df71cc41"
    head_repo: ClassVar[str] = "trl-lib/ddpo-aesthetic-predictor"
    head_file: ClassVar[str] = "aesthetic-model.pth"
    formulas = ("laion",)

    def _load(self) -> None:
        super()._load()
        path = self._hub_file(self.head_file, None if self.local else self.head_repo)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        self.head = aesthetic_mlp(self.model.config.projection_dim)
        self.head.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()}, strict=True)
        self._place(self.head)

    def _score_batch(self, images: list, prompts: list[str]) -> torch.Tensor:
        pix = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        f = _features(self.model.get_image_features(pixel_values=pix)).float()
        f = f / f.norm(dim=-1, keepdim=True)
        return self.head.float()(f).squeeze(-1)


# ------------------------------------------------------------------------------------------ HPS
def hps_preprocess(images: list, size: int = 224) -> torch.Tensor:
    """HPS v2's image transform: to tensor → resize the longest side to ``size`` (bicubic,
    antialiased) → pad to a centred square with zeros → OpenAI mean/std. float32 [n, 3, size, size].
    (open_clip's default eval transform resizes the shortest side and crops: up to 0.1 apart.)"""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    out = []
    for im in images:
        x = TF.to_tensor(im.convert("RGB"))
        h, w = x.shape[1:]
        scale = size / max(h, w)
        nh, nw = round(h * scale), round(w * scale)
        x = TF.resize(x, [nh, nw], interpolation=InterpolationMode.BICUBIC, antialias=True)
        pad_l, pad_t = (size - nw) // 2, (size - nh) // 2
        x = TF.pad(x, [pad_l, pad_t, size - nw - pad_l, size - nh - pad_t], fill=0)
        out.append(TF.normalize(x, OPENAI_MEAN, OPENAI_STD))
    return torch.stack(out)


class HPSv21Reward(PretrainedReward):
    """HPS v2.1 (Wu et al., 2023): cos(image, text) of an OpenCLIP ViT-H-14 whose weights are
    ``HPS_v2.1_compressed.pt``'s ``state_dict`` (Hub ``xswu/HPSv2``), loaded strictly into
    ``open_clip.create_model('ViT-H-14')``; no logit scale (≈ 0.29–0.31 for FLUX.1-dev)."""

    name = "hpsv2"
    keys = ("hpsv2",)
    description = "HPS v2.1 (xswu/HPSv2): cosine of an OpenCLIP ViT-H-14 with the HPS v2.1 weights"
    repo = "xswu/HPSv2"
    checkpoint: ClassVar[str] = "HPS_v2.1_compressed.pt"
    formulas = ("cosine",)

    def _load(self) -> None:
        import open_clip

        path = self._hub_file(self.checkpoint)
        arch, cfg = "ViT-H-14", None
        if self.local and (Path(self.where) / "open_clip_config.json").is_file():
            cfg = json.loads((Path(self.where) / "open_clip_config.json").read_text())["model_cfg"]
        if cfg is not None:
            import hashlib

            from open_clip.factory import _MODEL_CONFIGS

            arch = "alignbench-hps-" + hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
            _MODEL_CONFIGS[arch] = cfg
        model = open_clip.create_model(arch, pretrained=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        _load_exact(model, state.get("state_dict", state), self.checkpoint)
        self.model = self._place(model)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.image_size = model.visual.image_size
        self.image_size = self.image_size[0] if isinstance(self.image_size, tuple | list) else self.image_size

    def _score_batch(self, images: list, prompts: list[str]) -> torch.Tensor:
        pix = hps_preprocess(images, int(self.image_size)).to(self.device, self.dtype)
        img = self.model.encode_image(pix, normalize=True).float()
        txt = self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True).float()
        return (img * txt).sum(-1)


# ------------------------------------------------------------------------------------------ ImageReward
#: ImageReward's output normalisation (ImageReward/ImageReward.py: mean and std over its training set)
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072


def blip_checkpoint_to_transformers(state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """Split ImageReward.pt's state dict into transformers-named state dicts.

    BLIP's ViT (``blip.visual_encoder``: ``cls_token``, ``pos_embed``, ``patch_embed.proj``,
    ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``) maps onto
    ``BlipVisionModel`` (``embeddings.class_embedding``, ``embeddings.position_embedding``,
    ``embeddings.patch_embedding``, ``encoder.layers.<i>.{layer_norm1,self_attn.qkv,
    self_attn.projection,layer_norm2,mlp.fc1,mlp.fc2}``, ``post_layernorm``); BLIP's BERT with
    cross-attention (``blip.text_encoder``) has ``BlipTextModel``'s names already; ``mlp.layers``
    is the head.

    Returns:
        (vision, text, head) state dicts; the checkpoint's other keys are dropped.
    """
    vision, text, head = {}, {}, {}
    vmap = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
            "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
            "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
            "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}
    block = {"norm1": "layer_norm1", "attn.qkv": "self_attn.qkv", "attn.proj": "self_attn.projection",
             "norm2": "layer_norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for key, value in state.items():
        if key.startswith("blip.visual_encoder."):
            k = key.removeprefix("blip.visual_encoder.")
            if k in vmap:
                vision[vmap[k]] = value
            elif k.startswith("blocks."):
                _, i, rest = k.split(".", 2)
                part, _, leaf = rest.rpartition(".")
                if part in block:
                    vision[f"encoder.layers.{i}.{block[part]}.{leaf}"] = value
        elif key.startswith("blip.text_encoder."):
            k = key.removeprefix("blip.text_encoder.")
            if not k.startswith("pooler.") and k != "embeddings.position_ids":
                text[k] = value
        elif key.startswith("mlp.layers."):
            head[key.removeprefix("mlp.layers.")] = value
    return vision, text, head


def _load_exact(module: torch.nn.Module, state: dict, what: str) -> None:
    """``load_state_dict`` that fails on any missing or unexpected key (ImageReward's own loader
    uses strict=False, so a wrong checkpoint would load silently)."""
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{what}: {len(missing)} missing keys (e.g. {missing[:1]}), "
                         f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:1]})")


class ImageRewardReward(PretrainedReward):
    """ImageReward v1.0 (Xu et al., 2023): BLIP ViT-L/16 at 224² encodes the image, BLIP's BERT
    with cross-attention reads the prompt (``bert-base-uncased`` + ``[DEC]``/``[ENC]``, padded to
    35 tokens) against it, the MLP head maps the [CLS] state to r, and the score is
    (r − 0.16717362830052426) / 1.0333394966054072. Preprocessing: bicubic resize of the short side
    to 224, centre crop, OpenAI mean/std. Weights ``ImageReward.pt`` + ``med_config.json`` of
    ``THUDM/ImageReward``, loaded into transformers' ``BlipVisionModel``/``BlipTextModel`` with every
    key checked."""

    name = "imagereward"
    keys = ("imagereward",)
    description = "ImageReward v1.0 (THUDM/ImageReward): BLIP with cross-attention + MLP, normalised"
    repo = "THUDM/ImageReward"
    tokenizer_repo: ClassVar[str] = "google-bert/bert-base-uncased"
    formulas = ("imagereward",)
    max_length: ClassVar[int] = 35

    def _load(self) -> None:
        from transformers import (
            BertTokenizer,
            BlipTextConfig,
            BlipTextModel,
            BlipVisionConfig,
            BlipVisionModel,
        )

        med = json.loads(Path(self._hub_file("med_config.json")).read_text())
        vcfg = dict(hidden_size=med.get("encoder_width", 1024), intermediate_size=4096, num_hidden_layers=24,
                    num_attention_heads=16, image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu")
        if self.local and (Path(self.where) / "vision_config.json").is_file():
            vcfg.update(json.loads((Path(self.where) / "vision_config.json").read_text()))
        vision = BlipVisionModel(BlipVisionConfig(**vcfg))
        text = BlipTextModel(BlipTextConfig(
            vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], encoder_hidden_size=med["encoder_width"],
            intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
            num_attention_heads=med["num_attention_heads"], max_position_embeddings=med["max_position_embeddings"],
            hidden_act=med.get("hidden_act", "gelu"), layer_norm_eps=med.get("layer_norm_eps", 1e-12),
            pad_token_id=med.get("pad_token_id", 0), is_decoder=True), add_pooling_layer=False)
        head = aesthetic_mlp(med["hidden_size"])
        state = torch.load(self._hub_file("ImageReward.pt"), map_location="cpu", weights_only=True)
        v_sd, t_sd, h_sd = blip_checkpoint_to_transformers(state)
        _load_exact(vision, v_sd, "ImageReward.pt vision tower")
        _load_exact(text, t_sd, "ImageReward.pt text encoder")
        _load_exact(head, h_sd, "ImageReward.pt head")
        self.vision, self.text, self.head = self._place(vision), self._place(text), self._place(head)
        if self.local:
            tok = BertTokenizer.from_pretrained(self.where)
        else:
            tok = BertTokenizer.from_pretrained(self.tokenizer_repo)
        tok.add_special_tokens({"bos_token": "[DEC]"})
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        self.tokenizer = tok
        self.image_size = vcfg["image_size"]

    def preprocess(self, images: list) -> torch.Tensor:
        """BLIP/CLIP eval transform on PIL images: float32 [n, 3, S, S]."""
        import torchvision.transforms as T

        tf = T.Compose([T.Resize(self.image_size, interpolation=T.InterpolationMode.BICUBIC),
                        T.CenterCrop(self.image_size), T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])
        return torch.stack([tf(im.convert("RGB")) for im in images])

    def _score_batch(self, images: list, prompts: list[str]) -> torch.Tensor:
        pix = self.preprocess(images).to(self.device, self.dtype)
        img = self.vision(pixel_values=pix).last_hidden_state
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        out = self.text(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"], encoder_hidden_states=img,
                        encoder_attention_mask=torch.ones(img.shape[:-1], dtype=torch.long, device=self.device))
        r = self.head.float()(out.last_hidden_state[:, 0].float()).squeeze(-1)
        return (r - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


NATURAL_REWARDS: dict[str, type[PretrainedReward]] = {
    cls.name: cls for cls in (PickScoreReward, HPSv21Reward, ImageRewardReward, CLIPScoreReward, AestheticReward)}



def save_tiny_clip_reward(out: str | Path, seed: int = 0, logit_scale: float = 50.0):
    """Save a tiny random CLIP model with its processor (the offline 49,408-token tokenizer, 32-px
    images) to ``out``, laid out as PickScore's and CLIP score's ``reward.source`` directories: for
    tests and CPU runs of the natural-image path without the Hub.

    Returns:
        The ``CLIPModel`` (eval mode) that was saved.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(logit_scale))
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                            crop_size={"height": 32, "width": 32}),
                         tokenizer=clip_tokenizer_offline())
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return model
