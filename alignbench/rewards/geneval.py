"""The GenEval rule engine (Ghosh et al., 2023), shared by every domain.

It works on *detection records* (:class:`Detection`), so the same code scores the ShapesWorld
rule-based detector and, later, a natural-image detector (Mask2Former + CLIP colour classifier).
Rules, as specs/rewards_metrics.md states them:

* keep detections with score > 0.3 (> 0.9 when tag = counting), sorted by score, at most 16 per class;
* include clauses are ANDed; a clause needs >= ``count`` detections of its class, its top-``count``
  are "found"; colour: >= ``count`` found objects of the asked colour; position: every pair
  (found object, found object of clause ``index``) must show the relation under
  :func:`relative_position` (0.1 margin, 0.5 direction threshold);
* exclude clauses are ORed: the image fails if a class has >= the exclude count.

Three per-image scores: **accuracy** (the official 0/1 rule above), **strict** (Flow-GRPO's
``strict_correct``: counts, and colour counts, must be exact) and **partial** (Flow-GRPO's training
reward: mean over clause terms ``1 - |count - found| / count`` for count and colour, position
terms 0/1). Differences from the released reward server, on purpose: every partial term is clamped
to [0, 1] (the server's count term goes negative when more than twice the count is found), and the
server's spurious extra ``1.0`` appended after every position check (also after a failed one) is
dropped, so a position clause contributes exactly one term.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import MetadataError
from .base import Reward, to_uint8_images

GENEVAL_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

THRESHOLD = 0.3            # detection score threshold (strictly greater)
COUNTING_THRESHOLD = 0.9   # ... when tag == counting
MAX_OBJECTS = 16           # per class, after sorting by score
POSITION_THRESHOLD = 0.1   # box-size margin of the position rule
DIRECTION_THRESHOLD = 0.5  # |dx| or |dy| of the normalised revised offset


@dataclass
class Detection:
    """One detected object, the record every GenEval detector outputs.

    Attributes:
        cls: class name.
        score: confidence in [0, 1].
        box: (x0, y0, x1, y1) in pixels, x right and y down; x1/y1 are exclusive edges.
        color: one of :data:`GENEVAL_COLORS`, or None if no colour classifier ran.
        mask: optional bool array [H, W].
    """

    cls: str
    score: float
    box: tuple[float, float, float, float]
    color: str | None = None
    mask: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.cls, "score": round(float(self.score), 4),
                "box": [round(float(v), 2) for v in self.box], "color": self.color}


# ---------------------------------------------------------------------------------------------
# Metadata (GenEval's evaluation_metadata.jsonl format)
# ---------------------------------------------------------------------------------------------
class IncludeClause(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    cls: str = Field(alias="class", min_length=1)
    count: int = Field(ge=1, le=MAX_OBJECTS)
    color: Literal[GENEVAL_COLORS] | None = None  # type: ignore[valid-type]
    position: tuple[Literal[RELATIONS], int] | None = None  # type: ignore[valid-type]


class ExcludeClause(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    cls: str = Field(alias="class", min_length=1)
    count: int = Field(ge=1)


class GenEvalMetadata(BaseModel):
    """One prompt's metadata. Extra keys (e.g. ``image``) are kept and ignored by the rules."""

    model_config = ConfigDict(extra="allow")
    tag: Literal[GENEVAL_TAGS]  # type: ignore[valid-type]
    include: list[IncludeClause] = Field(min_length=1)
    exclude: list[ExcludeClause] = Field(default_factory=list)
    prompt: str

    @field_validator("include")
    @classmethod
    def _positions_point_back(cls, include: list[IncludeClause]) -> list[IncludeClause]:
        for i, clause in enumerate(include):
            if clause.position is not None and not 0 <= clause.position[1] < i:
                raise ValueError(f"include[{i}].position index {clause.position[1]} must name an earlier clause (0..{i - 1})")
        return include

    @model_validator(mode="after")
    def _nonempty_prompt(self) -> GenEvalMetadata:
        if not self.prompt.strip():
            raise ValueError("prompt must not be empty")
        return self


def parse_metadata(record: dict[str, Any], where: str = "") -> GenEvalMetadata:
    """Validate one metadata record.

    Raises:
        MetadataError: ``"<where>: field <path>: <problem>"`` for the first bad field.
    """
    try:
        return GenEvalMetadata.model_validate(record)
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join(str(p) for p in err["loc"]) or "<record>"
        got = err.get("input")
        got_text = f" (got {got!r})" if isinstance(got, str | int | float | bool) or got is None else ""
        msg = err["msg"] if err["type"] != "extra_forbidden" else "unknown field"
        raise MetadataError(f"{where + ': ' if where else ''}field '{path}': {msg}{got_text}") from None


# ---------------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------------
def filter_detections(detections: list[Detection], tag: str) -> dict[str, list[Detection]]:
    """Threshold (> 0.3, or > 0.9 for counting), sort by score (descending, stable), keep <= 16 per class."""
    threshold = COUNTING_THRESHOLD if tag == "counting" else THRESHOLD
    by_class: dict[str, list[Detection]] = defaultdict(list)
    for det in sorted(detections, key=lambda d: -d.score):
        if det.score > threshold and len(by_class[det.cls]) < MAX_OBJECTS:
            by_class[det.cls].append(det)
    return dict(by_class)


def relative_position(box_a: tuple[float, ...], box_b: tuple[float, ...],
                      margin: float = POSITION_THRESHOLD, direction: float = DIRECTION_THRESHOLD) -> set[str]:
    """Relations of box A relative to box B (GenEval ``relative_position``).

    o = c_a − c_b (box centres); r = max(|o| − margin·(dims_a + dims_b), 0)·sign(o) per axis; no
    relation if all |r| < 1e-3; else (dx, dy) = r / ‖o‖ and "left of" dx < −0.5, "right of"
    dx > 0.5, "above" dy < −0.5, "below" dy > 0.5 (image y grows downward).
    """
    a = np.asarray(box_a[:4], dtype=np.float64).reshape(2, 2)
    b = np.asarray(box_b[:4], dtype=np.float64).reshape(2, 2)
    offset = a.mean(axis=0) - b.mean(axis=0)
    dims = np.abs(a[1] - a[0]) + np.abs(b[1] - b[0])
    revised = np.maximum(np.abs(offset) - margin * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -direction:
        rels.add("left of")
    if dx > direction:
        rels.add("right of")
    if dy < -direction:
        rels.add("above")
    if dy > direction:
        rels.add("below")
    return rels


def _color_of(det: Detection) -> str:
    if det.color is None:
        raise ValueError("detection has no colour; run a colour classifier before the GenEval rules")
    return det.color


def evaluate_accuracy(objects: dict[str, list[Detection]], meta: GenEvalMetadata) -> tuple[bool, list[str]]:
    """GenEval's official 0/1 rule (``evaluate`` in evaluation/evaluate_images.py)."""
    correct = True
    reasons: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for req in meta.include:
        matched = True
        found = objects.get(req.cls, [])[: req.count]
        if len(found) < req.count:
            correct = matched = False
            reasons.append(f"expected {req.cls}>={req.count}, found {len(found)}")
        else:
            if req.color is not None:
                colors = [_color_of(d) for d in found]
                if colors.count(req.color) < req.count:
                    correct = matched = False
                    reasons.append(f"expected {req.color} {req.cls}>={req.count}, found {colors.count(req.color)} {req.color}")
            if req.position is not None and matched:
                rel, target = req.position
                if matched_groups[target] is None:
                    correct = matched = False
                    reasons.append(f"no target for {req.cls} to be {rel}")
                else:
                    for obj in found:
                        for tgt in matched_groups[target]:
                            rels = relative_position(obj.box, tgt.box)
                            if rel not in rels:
                                correct = matched = False
                                reasons.append(f"expected {req.cls} {rel} target, found {' and '.join(sorted(rels)) or 'no relation'}")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for ex in meta.exclude:
        n = len(objects.get(ex.cls, []))
        if n >= ex.count:
            correct = False
            reasons.append(f"expected {ex.cls}<{ex.count}, found {n}")
    return correct, reasons


def evaluate_strict_partial(objects: dict[str, list[Detection]], meta: GenEvalMetadata) -> tuple[bool, float]:
    """Flow-GRPO's ``evaluate_reward``: (strict correctness, partial score in [0, 1]).

    Strict: every include clause finds exactly ``count`` objects of its class, exactly ``count`` of
    them in the asked colour, and its position relation holds. Partial: mean of the clause terms
    (count: ``1 − |count − n|/count``; colour: same on the colour count, 0 if the class count is
    wrong; position: 1 if every pair holds else 0), each clamped to [0, 1].
    """
    strict = True
    terms: list[float] = []
    matched_groups: list[list[Detection] | None] = []
    for req in meta.include:
        matched = True
        found = objects.get(req.cls, [])
        terms.append(min(max(1 - abs(req.count - len(found)) / req.count, 0.0), 1.0))
        if len(found) != req.count:
            strict = matched = False
            if req.color is not None or req.position is not None:
                terms.append(0.0)
        else:
            if req.color is not None:
                n_color = [_color_of(d) for d in found].count(req.color)
                terms.append(min(max(1 - abs(req.count - n_color) / req.count, 0.0), 1.0))
                if n_color != req.count:
                    strict = matched = False
            if req.position is not None:
                rel, target = req.position
                ok = matched and matched_groups[target] is not None and all(
                    rel in relative_position(obj.box, tgt.box) for obj in found for tgt in matched_groups[target])
                terms.append(1.0 if ok else 0.0)
                if not ok:
                    strict = matched = False
        matched_groups.append(found if matched else None)
    return strict, (sum(terms) / len(terms) if terms else 0.0)


@dataclass
class GenEvalResult:
    """Scores of one image: ``correct`` (accuracy), ``strict``, ``partial`` and the failure reasons."""

    tag: str
    correct: bool
    strict: bool
    partial: float
    reasons: list[str]
    detections: list[Detection]


def score_detections(detections: list[Detection], meta: GenEvalMetadata) -> GenEvalResult:
    """Apply the GenEval rules to one image's raw detections."""
    objects = filter_detections(detections, meta.tag)
    correct, reasons = evaluate_accuracy(objects, meta)
    strict, partial = evaluate_strict_partial(objects, meta)
    kept = [d for dets in objects.values() for d in dets]
    return GenEvalResult(meta.tag, correct, strict, partial, reasons, kept)


class GenEvalReward(Reward):
    """GenEval scores from a detector. Keys: ``partial`` (Flow-GRPO's training reward, first so it
    is the default), ``accuracy`` and ``strict`` (0/1 per image).

    Args:
        detector: callable uint8 [H, W, 3] → list of :class:`~alignbench.rewards.geneval.Detection`.
        classes: the detector's vocabulary; metadata naming another class is rejected.
    """

    keys = ("partial", "accuracy", "strict")
    metadata_format = "geneval"

    def __init__(self, detector: Any, classes: tuple[str, ...]):
        self.detector = detector
        self.classes = tuple(classes)

    def validate_metadata(self, record: dict, where: str) -> None:
        meta = parse_metadata(record, where)
        for kind, clauses in (("include", meta.include), ("exclude", meta.exclude)):
            for i, clause in enumerate(clauses):
                if clause.cls not in self.classes:
                    raise MetadataError(f"{where}: field '{kind}.{i}.class': '{clause.cls}' is not a class of this "
                                        f"detector; allowed: {', '.join(self.classes)}")

    def details(self, images: Any, prompts: list[str], metadata: list[dict]) -> list[dict]:
        out = []
        for img, record in zip(to_uint8_images(images), metadata, strict=True):
            res = score_detections(self.detector(img), parse_metadata(record))
            out.append({"tag": res.tag, "accuracy": float(res.correct), "strict": float(res.strict),
                        "partial": res.partial, "reasons": res.reasons,
                        "detections": [d.to_dict() for d in res.detections]})
        return out

    def score(self, images: Any, prompts: list[str], metadata: list[dict]) -> dict[str, torch.Tensor]:
        recs = self.details(images, prompts, metadata)
        return {k: torch.tensor([r[k] for r in recs], dtype=torch.float32) for k in self.keys}
