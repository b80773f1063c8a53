"""Contact sheets: a grid of images, each enlarged, with boxes/labels overlaid and a caption."""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..io import atomic_write_bytes
from ..world.scene import load_font


@dataclass
class Tile:
    """One cell: a uint8 [H, W, 3] image, caption lines, and boxes [(x0, y0, x1, y1) in image
    pixels, label]."""

    image: np.ndarray
    caption: list[str]
    boxes: list[tuple[tuple[float, float, float, float], str]] = field(default_factory=list)
    ok: bool | None = None  # frames the tile green (True) or red (False)


def _box_colour(image: np.ndarray) -> tuple[int, int, int]:
    """Magenta or cyan, whichever stands out more against the image's mean colour."""
    mean = image.reshape(-1, 3).mean(0)
    options = [(255, 0, 255), (0, 255, 255)]
    return max(options, key=lambda c: float(np.abs(np.array(c) - mean).sum()))


def contact_sheet(tiles: list[Tile], cols: int = 4, scale: int = 3, caption_lines: int = 4) -> Image.Image:
    """Lay ``tiles`` out ``cols`` per row, each image enlarged ``scale``× (nearest neighbour).

    Returns:
        RGB PIL image.
    """
    if not tiles:
        raise ValueError("no tiles")
    h, w = tiles[0].image.shape[:2]
    tw, th = w * scale, h * scale
    font, small = load_font(11), load_font(9)
    line_h = 13
    pad = 6
    cell_w, cell_h = tw + 2 * pad, th + 2 * pad + caption_lines * line_h + 4
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    chars = max(10, tw // 6)
    for i, tile in enumerate(tiles):
        x, y = (i % cols) * cell_w + pad, (i // cols) * cell_h + pad
        big = Image.fromarray(tile.image).resize((tw, th), Image.NEAREST)
        sheet.paste(big, (x, y))
        if tile.ok is not None:
            draw.rectangle([x - 3, y - 3, x + tw + 2, y + th + 2], outline=(0, 160, 0) if tile.ok else (210, 0, 0), width=2)
        colour = _box_colour(tile.image)
        for (x0, y0, x1, y1), label in tile.boxes:
            bx = [x + x0 * scale, y + y0 * scale, x + x1 * scale - 1, y + y1 * scale - 1]
            draw.rectangle(bx, outline=colour, width=1)
            ty = bx[1] - 10 if bx[1] - 10 >= y else bx[3] + 1
            tx = bx[0]
            tx0, ty0, tx1, ty1 = draw.textbbox((tx, ty), label, font=small)
            if tx1 > x + tw:  # keep the label inside the tile
                tx = max(x, tx - (tx1 - x - tw))
                tx0, ty0, tx1, ty1 = draw.textbbox((tx, ty), label, font=small)
            draw.rectangle([tx0 - 1, ty0 - 1, tx1 + 1, ty1 + 1], fill=(0, 0, 0))
            draw.text((tx, ty), label, font=small, fill=colour)
        lines = [part for line in tile.caption for part in textwrap.wrap(line, chars)][:caption_lines]
        for j, line in enumerate(lines):
            draw.text((x, y + th + 3 + j * line_h), line, font=font, fill=(0, 0, 0))
    return sheet


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write a PNG atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _scalar_tile(image: np.ndarray, record: dict, details: dict) -> Tile:
    """A tile captioned with the prompt and every float score in ``details`` (no boxes, no verdict)."""
    scores = "  ".join(f"{k} {v:.3f}" for k, v in details.items()
                       if isinstance(v, float) and k not in ("seed", "prompt_index", "image_index"))
    return Tile(image, [record["prompt"], scores], [], None)


#: the ``details`` keys each task format's tile reads; a reward that gives fewer (a plugin reward on
#: a ``geneval``-format task) gets the scalar tile instead
_FORMAT_KEYS = {"geneval": ("detections", "accuracy", "strict", "partial"),
                "ocr": ("readings", "recognized", "ocr", "exact")}


def tile_for(fmt: str, image: np.ndarray, record: dict, details: dict) -> Tile:
    """A captioned tile for one scored image: the detector's boxes and GenEval verdict (``geneval``)
    or EasyOCR's readings and reward (``ocr``); framed green when the image passes (accuracy 1 or
    an exact OCR match). A scalar reward model (format ``prompt``), or any reward whose ``details``
    lack the format's keys (e.g. a plugin reward on a ``geneval``-format task), gets its float
    scores as the caption, no boxes and no frame."""
    if fmt not in _FORMAT_KEYS or not all(k in details for k in _FORMAT_KEYS[fmt]):
        return _scalar_tile(image, record, details)
    if fmt == "geneval":
        boxes = [(d["box"], f"{d['color']} {d['class']} {d['score']:.2f}") for d in details["detections"]]
        caption = [record["prompt"],
                   f"acc {details['accuracy']:.0f}  strict {details['strict']:.0f}  partial {details['partial']:.2f}"]
        return Tile(image, caption, boxes, bool(details["accuracy"]))
    boxes = [(r["box"], r["text"]) for r in details["readings"]]
    caption = [record["prompt"], f"read '{details['recognized']}'  reward {details['ocr']:.2f}"]
    return Tile(image, caption, boxes, bool(details["exact"]))
