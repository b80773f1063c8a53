"""Scenes for prompts: lay out the objects a GenEval record asks for (or deliberately violate it),
and signs for OCR prompts. Unspecified attributes (colours not asked for, sizes, positions,
background) are drawn at random: they are what makes diversity measurable."""

from __future__ import annotations

from typing import Literal

import numpy as np

from ..rewards.geneval import RELATIONS, relative_position
from .palette import CLASSES, COLORS, PALETTE_RGB
from .scene import (
    ObjectSpec,
    Scene,
    SignSpec,
    WorldConfig,
    sample_background,
    text_size,
)

Violation = Literal["count", "color", "relation", "exclude", "class"]
VIOLATIONS: tuple[str, ...] = ("count", "color", "relation", "exclude", "class")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

#: Safety margin on the direction threshold when placing related objects, so that the detected
#: boxes (which differ from the drawn squares by the anti-aliased rim) still show the relation.
POSITION_SAFETY = 0.15


class LayoutError(RuntimeError):
    """No non-overlapping placement was found for the requested objects."""


def _overlaps(a: ObjectSpec, b: ObjectSpec, gap: float) -> bool:
    need = (a.size + b.size) / 2 + gap
    return abs(a.cx - b.cx) < need and abs(a.cy - b.cy) < need


def applicable_violations(meta: dict) -> list[str]:
    """Violations that make sense for a metadata record (e.g. 'relation' only for position)."""
    out = ["count", "class"]
    if any("color" in c for c in meta["include"]):
        out.append("color")
    if any("position" in c for c in meta["include"]):
        out.append("relation")
    if meta.get("exclude"):
        out.append("exclude")
    return out


def objects_for(meta: dict, rng: np.random.Generator, violate: str | None = None) -> tuple[list[dict], list]:
    """The object list (class, colour) and relations [(i_obj, rel, j_obj)] a scene must realise."""
    include = [dict(c) for c in meta["include"]]
    if violate is not None and violate not in applicable_violations(meta):
        raise ValueError(f"violation '{violate}' does not apply to tag '{meta['tag']}'; "
                         f"allowed: {', '.join(applicable_violations(meta))}")
    if violate == "count":  # one object fewer than asked in the first clause
        include[0]["count"] -= 1
    elif violate == "exclude":  # one more object: hits the exclude clause
        include[0]["count"] += 1
    elif violate == "class":  # first clause drawn as a class the prompt does not mention
        others = [c for c in CLASSES if c not in {cl["class"] for cl in include}]
        include[0]["class"] = others[int(rng.integers(len(others)))]
    elif violate == "color":
        i = next(i for i, c in enumerate(include) if "color" in c)
        others = [c for c in COLORS if c != include[i]["color"]]
        include[i]["color"] = others[int(rng.integers(len(others)))]
    objs: list[dict] = []
    first_index: list[int] = []
    for clause in include:
        first_index.append(len(objs))
        for _ in range(clause["count"]):
            color = clause.get("color") or COLORS[int(rng.integers(len(COLORS)))]
            objs.append({"cls": clause["class"], "color": color})
    relations = []
    for ci, clause in enumerate(include):
        if "position" in clause and clause["count"] > 0:
            rel, target = clause["position"]
            if violate == "relation":
                rel = OPPOSITE[rel]
            relations.append((first_index[ci], rel, first_index[target]))
    return objs, relations


def _place(objs: list[dict], relations: list, rng: np.random.Generator, cfg: WorldConfig) -> list[ObjectSpec]:
    size = cfg.image_size
    for attempt in range(200):
        hi = cfg.size_max - (attempt // 40) * 2  # shrink the size range if the scene is crowded
        lo = min(cfg.size_min, hi)
        placed: list[ObjectSpec] = []
        for obj in objs:
            ok = False
            s = int(rng.integers(lo, hi, endpoint=True))
            for _ in range(100):
                lo_c, hi_c = cfg.margin + s / 2, size - cfg.margin - s / 2
                cand = ObjectSpec(obj["cls"], obj["color"], float(rng.uniform(lo_c, hi_c)),
                                  float(rng.uniform(lo_c, hi_c)), float(s))
                # box edges on pixel boundaries: no knife-edge half-covered rims
                cand.cx, cand.cy = round(cand.cx - s / 2) + s / 2, round(cand.cy - s / 2) + s / 2
                if any(_overlaps(cand, p, cfg.gap) for p in placed):
                    continue
                i = len(placed)
                good = True
                for a, rel, b in relations:
                    if a == i and b < i:
                        good = rel in relative_position(cand.box, placed[b].box, direction=0.5 + POSITION_SAFETY)
                if good:
                    placed.append(cand)
                    ok = True
                    break
            if not ok:
                break
        if len(placed) == len(objs):
            return placed
    raise LayoutError(f"could not place {len(objs)} objects")


def scene_for_metadata(meta: dict, rng: np.random.Generator, cfg: WorldConfig | None = None,
                       violate: str | None = None) -> Scene:
    """A random scene that satisfies a GenEval record (``violate=None``) or breaks it one way.

    Args:
        meta: GenEval metadata dict (tag, include, exclude?, prompt).
        violate: None, or one of :data:`VIOLATIONS` that applies to the record
            (see :func:`applicable_violations`): ``count`` draws one object fewer, ``exclude`` one
            more, ``class`` swaps the first class, ``color`` a wrong colour, ``relation`` the
            opposite relation.

    Raises:
        ValueError: ``violate`` does not apply to the record's tag.
        LayoutError: the objects do not fit (not expected with the default config).
    """
    cfg = cfg or WorldConfig()
    objs, relations = objects_for(meta, rng, violate)
    placed = _place(objs, relations, rng, cfg)
    bg = sample_background(rng, [PALETTE_RGB[o.color] for o in placed], cfg)
    return Scene(bg, placed)


def random_scene(rng: np.random.Generator, cfg: WorldConfig | None = None, n_min: int = 1, n_max: int = 4) -> Scene:
    """A scene of 1–4 random objects (random classes and colours), for detector measurements."""
    cfg = cfg or WorldConfig()
    n = int(rng.integers(n_min, n_max, endpoint=True))
    objs = [{"cls": CLASSES[int(rng.integers(len(CLASSES)))], "color": COLORS[int(rng.integers(len(COLORS)))]}
            for _ in range(n)]
    placed = _place(objs, [], rng, cfg)
    return Scene(sample_background(rng, [PALETTE_RGB[o.color] for o in placed], cfg), placed)


def _random_tone(rng: np.random.Generator, light: bool) -> tuple[int, int, int]:
    base = rng.uniform(200, 250) if light else rng.uniform(10, 60)
    tint = rng.integers(-15, 16, size=3)
    return tuple(int(np.clip(base + t, 0, 255)) for t in tint)


def scene_for_sign(text: str, rng: np.random.Generator, cfg: WorldConfig | None = None) -> Scene:
    """A random scene with one sign carrying ``text``: light panel with dark text or the reverse,
    font size from the config's range (shrunk until the text fits), random position."""
    cfg = cfg or WorldConfig()
    size = cfg.image_size
    light_panel = bool(rng.integers(2))
    panel, ink = _random_tone(rng, light_panel), _random_tone(rng, not light_panel)
    font = int(rng.integers(cfg.font_size_min, cfg.font_size_max, endpoint=True))
    pad_x, pad_y = 3, 3
    while font > 6:
        tw, th = text_size(text, font, cfg.sign_font)
        w, h = tw + 2 * pad_x, th + 2 * pad_y
        if w <= size - 2 * cfg.margin:
            break
        font -= 1
    cx = float(rng.uniform(cfg.margin + w / 2, size - cfg.margin - w / 2))
    cy = float(rng.uniform(cfg.margin + h / 2, size - cfg.margin - h / 2))
    sign = SignSpec(text, round(cx), round(cy), float(w), float(h), panel, ink, font, cfg.sign_font)
    return Scene(sample_background(rng, [panel], cfg), [], [sign])


__all__ = ["RELATIONS", "VIOLATIONS", "LayoutError", "applicable_violations", "random_scene",
           "scene_for_metadata", "scene_for_sign"]
