"""The pretraining dev probe: a fixed set of **train-split** prompts sampled with the current (EMA)
weights every N images seen, scored per tag, so that pretraining recipes can be compared on
learning curves (accuracy against images seen) before hours are spent on one.

Only train-split prompts are used, so the probe never looks at the test split that ``alignbench
eval`` reports. The probe (:func:`probe_records`):

* every ``single_object`` prompt of the train split (``single_images`` images each);
* every ``colors`` prompt of the train split: each class alone in each colour that is not held out
  (``color_images`` images each);
* the first ``per_tag`` train prompts of each other GenEval tag (``other_images`` images each);
* optionally the first ``ocr_prompts`` OCR train prompts (``ocr_images`` each, EasyOCR reward).

Per tag it logs GenEval accuracy and partial score (the task's own rule engine on the ShapesWorld
detector). For the one-object tags (single_object, colors) it also logs ``class_hit`` (an object
of the asked class is detected) and ``color_hit`` (one of them has the asked colour): these move
long before the strict rules do.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field

from ...config import StrictModel

#: GenEval tags other than single_object and colors, in the probe's order.
OTHER_TAGS = ("two_object", "counting", "position", "color_attr")


class ProbeConfig(StrictModel):
    """What the dev probe samples (train-split prompts only) and how often."""

    every: int = Field(0, ge=0, description="images seen between probes (0 = no probe)")
    single_images: int = Field(8, ge=1, description="images per single_object prompt")
    color_images: int = Field(2, ge=1, description="images per colors prompt")
    per_tag: int = Field(6, ge=0, description="prompts of each other GenEval tag")
    other_images: int = Field(4, ge=1, description="images per prompt of the other tags")
    ocr_prompts: int = Field(0, ge=0, description="OCR train prompts (0 = no OCR probe; EasyOCR is slow)")
    ocr_images: int = Field(2, ge=1, description="images per OCR prompt")
    steps: int = Field(20, ge=1, description="Euler ODE steps (the tiny-shapes evaluation protocol's)")
    seed: int = Field(0, description="noise seed of the probe images (fixed over the run)")


@dataclass
class ProbeItem:
    """One probe prompt: its metadata record, format ('geneval'/'ocr') and images to sample."""

    record: dict
    fmt: str
    images: int


def probe_records(cfg: ProbeConfig) -> list[ProbeItem]:
    """The probe's prompts, in a fixed order (train split only; see the module docstring)."""
    from ...task import get_task

    train = get_task("geneval").prompts("train")
    items = [ProbeItem(r, "geneval", cfg.single_images) for r in train if r["tag"] == "single_object"]
    items += [ProbeItem(r, "geneval", cfg.color_images) for r in train if r["tag"] == "colors"]
    for tag in OTHER_TAGS:
        items += [ProbeItem(r, "geneval", cfg.other_images) for r in [r for r in train if r["tag"] == tag][: cfg.per_tag]]
    if cfg.ocr_prompts:
        ocr = get_task("ocr").prompts("train")[: cfg.ocr_prompts]
        items += [ProbeItem(r, "ocr", cfg.ocr_images) for r in ocr]
    return items


def _hits(record: dict, detections: list[dict]) -> tuple[float, float]:
    """(class_hit, color_hit) of a one-object record against the raw detections."""
    want = record["include"][0]
    same = [d for d in detections if d["class"] == want["class"]]
    color = want.get("color")
    return float(bool(same)), float(any(d.get("color") == color for d in same)) if color else float(bool(same))


def summarize_probe(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per-tag means of the probe rows (keys ``accuracy``, ``partial``, ``class_hit``, ``color_hit``,
    ``ocr``, ``exact`` where present) plus ``geneval`` = the unweighted mean over the GenEval tags
    present (GenEval's headline, mean over tags) and ``n`` = images per tag."""
    out: dict[str, dict[str, float]] = {}
    for tag in dict.fromkeys(r["tag"] for r in rows):
        sel = [r for r in rows if r["tag"] == tag]
        keys = [k for k in ("accuracy", "partial", "class_hit", "color_hit", "ocr", "exact") if k in sel[0]]
        out[tag] = {k: float(np.mean([r[k] for r in sel])) for k in keys} | {"n": len(sel)}
    gen = [t for t in out if t != "ocr"]
    if gen:
        out["geneval"] = {"accuracy": float(np.mean([out[t]["accuracy"] for t in gen])),
                          "partial": float(np.mean([out[t]["partial"] for t in gen]))}
    return out


class DevProbe:
    """Samples and scores the probe for a pipeline's current weights.

    Args:
        cfg: probe settings.
        height, width, max_sequence_length: the embedded model's sampling sizes.
    """

    def __init__(self, cfg: ProbeConfig, height: int = 64, width: int = 64, max_sequence_length: int = 20):
        from ...evaluation import noise_seed
        from ...task import get_task

        self.cfg, self.items = cfg, probe_records(cfg)
        self.size, self.max_len = (height, width), max_sequence_length
        self.pairs = [(i, j) for i, it in enumerate(self.items) for j in range(it.images)]
        self.seeds = [noise_seed(cfg.seed, i, j) for i, j in self.pairs]
        self.rewards = {"geneval": get_task("geneval").reward("shapes")}
        if cfg.ocr_prompts:
            self.rewards["ocr"] = get_task("ocr").reward("shapes")

    def __len__(self) -> int:
        return len(self.pairs)

    @torch.no_grad()
    def run(self, pipe, device: str | torch.device = "cpu") -> tuple[dict, list[dict]]:
        """Sample every probe image with a copy of ``pipe`` (the caller's pipeline is not touched)
        and score it.

        Returns:
            (summary, rows): :func:`summarize_probe` of the rows plus ``seconds``; one row per
            image with the tag, prompt index and the reward's sub-scores.
        """
        from ..backbone import FluxBackbone

        t0 = time.perf_counter()
        backbone = FluxBackbone(copy.deepcopy(pipe), *self.size, self.max_len, 1.0, device)
        prompts = [self.items[i].record["prompt"] for i, _ in self.pairs]
        images = []
        for start in range(0, len(prompts), 128):
            sl = slice(start, start + 128)
            lat = backbone.sample_ode(backbone.encode_prompts(prompts[sl]), self.seeds[sl], self.cfg.steps, batch_size=128)
            img = backbone.decode(lat)
            images.append((img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        images_np = np.concatenate(images)
        rows: list[dict] = []
        for fmt, reward in self.rewards.items():
            idx = [k for k, (i, _) in enumerate(self.pairs) if self.items[i].fmt == fmt]
            metas = [self.items[self.pairs[k][0]].record for k in idx]
            details = reward.details([images_np[k] for k in idx], [m["prompt"] for m in metas], metas)
            for k, meta, det in zip(idx, metas, details, strict=True):
                row = {"prompt_index": self.pairs[k][0], "tag": meta.get("tag", fmt)}
                row |= {key: float(det[key]) for key in reward.keys}
                if fmt == "geneval" and meta["tag"] in ("single_object", "colors"):
                    row["class_hit"], row["color_hit"] = _hits(meta, det.get("detections", []))
                rows.append(row)
        summary = summarize_probe(rows)
        summary["seconds"] = time.perf_counter() - t0
        self.last_images = images_np
        return summary, rows


def read_curves(run_dir) -> list[dict]:
    """The probe rows (``probe.jsonl``) of a pretraining output directory, in order of images seen;
    an empty list if it has none."""
    from pathlib import Path

    from ...io import read_jsonl

    path = Path(run_dir) / "probe.jsonl"
    return sorted(read_jsonl(path), key=lambda r: r["images"]) if path.exists() else []


def plot_curves(run_dirs: list, out_png, labels: list[str] | None = None,
                tags: tuple[str, ...] = ("geneval", "single_object", "colors", "two_object", "counting",
                                         "position", "color_attr", "ocr"),
                references: dict[str, dict] | None = None) -> list[str]:
    """Draw the probe curves of several pretraining runs, one panel per tag, accuracy (OCR: reward)
    against images seen; writes ``out_png`` and the same as SVG. Returns the tags drawn.

    ``references`` maps a label to a probe summary of a saved pipeline (e.g. the shipped weights,
    from ``scripts/probe_pipeline.py``), drawn as a dashed horizontal line in each panel.

    Raises:
        UserError: none of the directories holds probe rows.
    """
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...errors import UserError

    curves = [(labels[i] if labels else Path(d).name, read_curves(d)) for i, d in enumerate(run_dirs)]
    curves = [(name, rows) for name, rows in curves if rows]
    if not curves:
        raise UserError("--plot: no probe.jsonl rows in " + ", ".join(str(d) for d in run_dirs)
                        + " (pretrain with --set probe.every=N to record them)")
    present = [t for t in tags if any(t in r["summary"] for _, rows in curves for r in rows)]
    cols = 4
    nrows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    for ax, tag in zip(axes.flat, present, strict=False):
        key = "ocr" if tag == "ocr" else "accuracy"
        for name, rows in curves:
            pts = [(r["images"] / 1e3, r["summary"][tag][key]) for r in rows if tag in r["summary"]]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=name)
            if tag in ("single_object", "colors"):
                pts = [(r["images"] / 1e3, r["summary"][tag]["class_hit"]) for r in rows if tag in r["summary"]]
                ax.plot(*zip(*pts, strict=True), ls=":", color=ax.lines[-1].get_color())
        for i, (name, ref) in enumerate((references or {}).items()):
            if tag in ref:
                ax.axhline(ref[tag][key], ls="--", lw=1, color=f"C{len(curves) + i}", label=name)
        ax.set_title(f"{tag} ({'reward' if tag == 'ocr' else 'accuracy'}; dotted: class hit)"
                     if tag in ("single_object", "colors") else f"{tag} ({'OCR reward' if tag == 'ocr' else 'accuracy'})",
                     fontsize=9)
        ax.set_xlabel("images seen (thousands)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    fig.savefig(out_png.with_suffix(".svg"))
    plt.close(fig)
    return present


class ProbeMixin:
    """The dev probe of a :class:`~.trainer.Pretrainer` run (scored with the EMA weights)."""

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
