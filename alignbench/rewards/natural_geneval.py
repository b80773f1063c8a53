"""GenEval on natural images: a Mask2Former instance detector and GenEval's CLIP colour classifier
feeding the shared rule engine (:mod:`alignbench.rewards.geneval`), the ``geneval-natural`` reward.

Official GenEval uses mmdetection 2.x's Mask2Former Swin-S checkpoint (COCO instance segmentation,
OpenMMLab download site) and open_clip ViT-L-14 ``openai``. mmdetection's CUDA ops do not build for
current Python/torch, so alignbench runs transformers' ``Mask2FormerForUniversalSegmentation``
(default ``facebook/mask2former-swin-small-coco-instance``, a conversion of the Detectron2 weights,
not mmdet's retrained checkpoint) with mmdetection's instance post-processing re-implemented:

* per query, class probabilities = softmax over the 80 classes + no-object, no-object dropped;
  the top 100 (query, class) pairs over the image;
* each pair's mask = sigmoid of its query's mask logits, upsampled bilinearly to the processed
  input and then to the original image, binarised at 0.5 at full resolution;
* score = class probability × mean mask probability inside the binary mask;
* box = the binary mask's extent (x0, y0, x1 + 1, y1 + 1), as mmdet's ``mask2bbox``.

GenEval's thresholds (0.3, 0.9 for counting), the 16-per-class cap and the rules are the engine's.
Colour (GenEval's ``evaluate_images.py``): each kept object is pasted onto a #999999 background
through its mask, cropped to its box, and classified among the 10 colours by CLIP zero-shot with
three templates ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c}
object"; per-colour text embeddings averaged over templates). Detections can differ from official
GenEval because the weights and the image preprocessing (transformers' processor: shortest side
800, ImageNet mean/std, bilinear) are not mmdet's; the rules are identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .geneval import GENEVAL_COLORS, THRESHOLD, Detection, GenEvalReward
from .pretrained import PretrainedReward

TOP_K = 100          # mmdet's max_per_image for Mask2Former instance results
COLOR_TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")
BACKGROUND = (153, 153, 153)  # #999999


def instance_detections(class_logits: torch.Tensor, mask_logits: torch.Tensor, input_hw: tuple[int, int],
                        image_hw: tuple[int, int], classes: tuple[str, ...],
                        top_k: int = TOP_K) -> list[tuple[str, float, tuple[float, float, float, float], np.ndarray]]:
    """mmdetection's Mask2Former instance post-processing for one image (module docstring).

    Args:
        class_logits: float [Q, C + 1] (last = no object).
        mask_logits: float [Q, h, w] at the model's mask resolution.
        input_hw: (H_in, W_in) of the processed (resized, unpadded) input the masks refer to.
        image_hw: (H, W) of the original image.
        classes: the C class names in label order.
        top_k: (query, class) pairs kept.

    Returns:
        [(class, score, box (x0, y0, x1, y1) in pixels, bool mask [H, W])] sorted by score, descending.
    """
    probs = class_logits.float().softmax(-1)[:, :-1]
    n_cls = probs.shape[1]
    scores, idx = probs.flatten().topk(min(top_k, probs.numel()))
    queries, labels = idx // n_cls, idx % n_cls
    m = mask_logits[queries].float()[None]
    m = torch.nn.functional.interpolate(m, size=input_hw, mode="bilinear", align_corners=False)
    m = torch.nn.functional.interpolate(m, size=image_hw, mode="bilinear", align_corners=False)[0].sigmoid()
    binary = m > 0.5
    mask_score = (m * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    final = scores * mask_score
    out = []
    for j in final.argsort(descending=True).tolist():
        mask = binary[j].numpy()
        ys, xs = np.nonzero(mask)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)) if len(xs) else (0.0,) * 4
        out.append((classes[int(labels[j])], float(final[j]), box, mask))
    return out


def color_crop(image: np.ndarray, mask: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """GenEval's colour input: the object through its mask on #999999, cropped to its box. uint8 [h, w, 3]."""
    out = np.empty_like(image)
    out[:] = BACKGROUND
    out[mask] = image[mask]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    crop = out[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    return crop if crop.size else out


class Mask2FormerDetector:
    """Callable uint8 [H, W, 3] → list of :class:`~alignbench.rewards.geneval.Detection` with colours.

    Args:
        model, processor: a ``Mask2FormerForUniversalSegmentation`` (80 COCO classes) and its processor.
        clip, clip_preprocess, clip_tokenizer: an open_clip model, its image transform and tokenizer.
        classes: class names in the detector's label order.
        device, dtype: where and in what the models run.
    """

    def __init__(self, model, processor, clip, clip_preprocess, clip_tokenizer, classes: tuple[str, ...],
                 device: torch.device, dtype: torch.dtype):
        self.model, self.processor = model, processor
        self.clip, self.clip_preprocess, self.clip_tokenizer = clip, clip_preprocess, clip_tokenizer
        self.classes, self.device, self.dtype = tuple(classes), device, dtype
        self._text: dict[str, torch.Tensor] = {}

    def color_classifier(self, cls: str) -> torch.Tensor:
        """Normalised text embeddings [10, D] of the colours for ``cls`` (templates averaged)."""
        if cls not in self._text:
            rows = []
            for c in GENEVAL_COLORS:
                tok = self.clip_tokenizer([t.format(c=c, cls=cls) for t in COLOR_TEMPLATES]).to(self.device)
                e = self.clip.encode_text(tok).float()
                e = e / e.norm(dim=-1, keepdim=True)
                rows.append(e.mean(0) / e.mean(0).norm())
            self._text[cls] = torch.stack(rows)
        return self._text[cls]

    @torch.no_grad()
    def classify_colors(self, crops: list[np.ndarray], classes: list[str]) -> list[str]:
        """argmax over the 10 colours of 100·cos(image, colour text) per crop."""
        from PIL import Image

        if not crops:
            return []
        pix = torch.stack([self.clip_preprocess(Image.fromarray(c)) for c in crops]).to(self.device, self.dtype)
        f = self.clip.encode_image(pix).float()
        f = f / f.norm(dim=-1, keepdim=True)
        return [GENEVAL_COLORS[int((100 * f[i] @ self.color_classifier(cls).T).argmax())]
                for i, cls in enumerate(classes)]

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> list[Detection]:
        from PIL import Image

        inputs = self.processor(images=[Image.fromarray(image)], return_tensors="pt")
        pix = inputs["pixel_values"].to(self.device, self.dtype)
        out = self.model(pixel_values=pix)
        h, w = image.shape[:2]
        dets = instance_detections(out.class_queries_logits[0].cpu(), out.masks_queries_logits[0].cpu(),
                                   tuple(pix.shape[-2:]), (h, w), self.classes)
        kept, per_class = [], {}
        for cls, score, box, mask in dets:  # only what the rules can look at gets a colour
            if score > THRESHOLD and per_class.get(cls, 0) < 16:
                per_class[cls] = per_class.get(cls, 0) + 1
                kept.append((cls, score, box, mask))
        colors = self.classify_colors([color_crop(image, m, b) for _, _, b, m in kept], [c for c, *_ in kept])
        return [Detection(cls, score, box, color, mask) for (cls, score, box, mask), color in zip(kept, colors,
                                                                                                    strict=True)]


class NaturalGenEvalReward(PretrainedReward, GenEvalReward):
    """GenEval on natural images: Mask2Former (transformers) + GenEval's CLIP ViT-L-14 colour
    classifier + the GenEval rules. Keys ``partial``, ``accuracy``, ``strict``.

    ``reward.source=DIR`` loads ``DIR/mask2former`` (``save_pretrained`` of the model and its
    processor) and ``DIR/clip`` (an open_clip ``local-dir``: ``open_clip_config.json`` + weights).
    """

    name = "geneval-natural"
    description = "GenEval rules over Mask2Former detections and GenEval's CLIP colour classifier (natural images)"
    repo = "facebook/mask2former-swin-small-coco-instance"
    clip_repo = "hf-hub:timm/vit_large_patch14_clip_224.openai"  # open_clip ViT-L-14 'openai'
    formulas = ("geneval",)
    keys = GenEvalReward.keys
    metadata_format = "geneval"

    def __init__(self, options=None):
        from ..natural_prompts import COCO80

        self.classes = COCO80
        PretrainedReward.__init__(self, options)

    def _load(self) -> None:
        import open_clip
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        if self.local:
            m2f = str(Path(self.where) / "mask2former")
            model = Mask2FormerForUniversalSegmentation.from_pretrained(m2f)
            processor = AutoImageProcessor.from_pretrained(m2f)
            clip_id = "local-dir:" + str(Path(self.where) / "clip")
        else:
            model = self._pretrained(Mask2FormerForUniversalSegmentation)
            processor = self._pretrained(AutoImageProcessor)
            clip_id = self.clip_repo
        if model.config.num_labels != len(self.classes):
            raise ValueError(f"the detector has {model.config.num_labels} classes, GenEval needs the 80 COCO classes")
        clip, _, preprocess = open_clip.create_model_and_transforms(clip_id)
        self.detector = Mask2FormerDetector(self._place(model), processor, self._place(clip), preprocess,
                                            open_clip.get_tokenizer(clip_id), self.classes, self.device, self.dtype)

    def score(self, images: Any, prompts: list[str], metadata: list[dict]) -> dict[str, torch.Tensor]:
        return GenEvalReward.score(self, images, prompts, metadata)
