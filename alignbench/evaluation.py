"""The evaluation protocol shared by ``alignbench eval`` and ``alignbench run``.

Every model is scored on the same noises: test prompts × K images per prompt, image j of prompt p
starts from the initial latent drawn with the seed :func:`noise_seed` (eval seed, p, j), and is
sampled with the deterministic Euler ODE on the backbone's σ grid for the model's eval steps. The
task's reward gives every sub-score per image; LGMD is computed per prompt over its K final
latents and averaged over prompts (specs/rewards_metrics.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from .config import StrictModel
from .io import write_json, write_jsonl
from .metrics.diversity import lgmd
from .scoring import summarize_rows


class EvalConfig(StrictModel):
    """Evaluation protocol settings."""

    split: str = Field("test", pattern="^(train|test|dev)$", description="prompt split (dev: the task's dev "
                       "prompts, by default held out of train)")
    images_per_prompt: int = Field(4, ge=2, description="K images per prompt (GenEval: 4)")
    images_per_tag: int | None = Field(None, ge=1, description="at least this many images per tag: a tag with n "
                                       "prompts gets max(K, ceil(images_per_tag / n)) images per prompt (None: K)")
    steps: int | None = Field(None, ge=1, description="ODE steps; default: the model's eval_steps")
    seed: int = Field(0, description="seed of the per-image initial noises")
    max_prompts: int | None = Field(None, ge=1, description="first N prompts only (smoke tests)")
    batch_size: int = Field(128, ge=1, description="images per transformer forward")
    grid_prompts: int = Field(8, ge=1, description="prompts in the sample grid (× images_per_prompt, max 4)")
    dev_every: int = Field(0, ge=0, description="during `run`: score the dev split with the EMA weights before "
                           "training and every this many iterations (and after the last) into dev.jsonl; 0 = off")
    dev_images_per_prompt: int = Field(4, ge=2, description="dev split: images per prompt")
    dev_images_per_tag: int | None = Field(96, ge=1, description="dev split: at least this many images per tag")
    dev_seed: int = Field(1, description="seed of the dev split's per-image noises (the test split uses `seed`)")
    features_source: str | None = Field(None, description="natural-image diversity features: DINOv2 Hub id or "
                                        "local directory (default facebook/dinov2-large), or 'pooled' for the weight-free "
                                        "pooled pixels (bench on the random models); unused on shapes")


#: Evaluation presets per (model, task) on top of :class:`EvalConfig`'s defaults. The embedded tasks
#: are sampled densely enough for the headline figure to be precise (issue 17): GenEval 16 images
#: per prompt and at least 192 per tag (single_object's 3 prompts get 64 each; 1,152 images), so
#: that the standard error of accuracy is at most √(6 · 0.25 / 192) / 6 = 0.0147 whatever the
#: per-tag accuracies; OCR 9 images per prompt (48 × 9 = 432 images).
EVAL_PRESETS: dict[str, dict[str, int]] = {
    "tiny-shapes:geneval": {"images_per_prompt": 16, "images_per_tag": 192},
    "tiny-shapes:ocr": {"images_per_prompt": 9},
}


def eval_preset(model: str, task: str) -> dict[str, int]:
    """The :data:`EVAL_PRESETS` entry of a model and task (empty if none)."""
    return dict(EVAL_PRESETS.get(f"{model}:{task}", {}))


def dev_config(cfg: EvalConfig) -> EvalConfig:
    """The protocol of the dev learning curve: ``cfg`` on the dev split with the ``dev_*`` image counts
    and noise seed (the sampler, steps and batch size unchanged)."""
    return cfg.model_copy(update={"split": "dev", "images_per_prompt": cfg.dev_images_per_prompt,
                                  "images_per_tag": cfg.dev_images_per_tag, "seed": cfg.dev_seed,
                                  "max_prompts": None})


def images_per_prompt(records: list[dict], cfg: EvalConfig) -> list[int]:
    """Images to sample for each record: ``cfg.images_per_prompt``, raised for the prompts of a tag
    with few prompts so that every tag has at least ``cfg.images_per_tag`` images."""
    k = cfg.images_per_prompt
    if not cfg.images_per_tag:
        return [k] * len(records)
    counts: dict[str, int] = {}
    for r in records:
        counts[r.get("tag", "")] = counts.get(r.get("tag", ""), 0) + 1
    return [max(k, -(-cfg.images_per_tag // counts[r.get("tag", "")])) for r in records]


def standard_error(summary_metrics: dict[str, dict[str, float]], key: str) -> float | None:
    """Standard error of the overall figure of a 0/1 metric averaged over tags (GenEval's accuracy),
    binomial per tag: √(Σ_t p_t(1 − p_t)/n_t) / T (T tags, n_t images of tag t). None without
    per-tag rows. (The summary's other keys, averaged over images, get std/√n.)"""
    tags = [t for t in summary_metrics if t != "overall" and key in summary_metrics[t]]
    if not tags:
        return None
    var = sum(summary_metrics[t][key] * (1 - summary_metrics[t][key]) / summary_metrics[t]["n"] for t in tags)
    return float(np.sqrt(var) / len(tags))


def noise_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """Seed of the initial noise of image ``image_index`` of prompt ``prompt_index`` (63-bit)."""
    return int(np.random.SeedSequence([seed, prompt_index, image_index]).generate_state(2, np.uint64)[0] >> 1)


@dataclass
class EvalResult:
    """Outcome of one evaluation.

    Attributes:
        rows: one dict per prompt × image (prompt index, image index, seed, tag, prompt, every
            reward key, and the reward's details such as detections or OCR readings).
        summary: ``{"metrics": {tag: {key: mean}}, "lgmd": float, "n_prompts", "n_images", ...}``.
        images: uint8 [N, H, W, 3] in row order.
        latents: float [N, T, C] final packed latents in row order.
    """

    rows: list[dict]
    summary: dict[str, Any]
    images: np.ndarray
    latents: torch.Tensor = field(repr=False)


def evaluate(backbone, task, cfg: EvalConfig, eval_steps: int,
             progress: Callable[[str, int, int], None] | None = None, process_index: int = 0,
             num_processes: int = 1, gather_object: Callable[[list], list] | None = None) -> EvalResult:
    """Run the protocol for ``backbone`` on ``task`` (in the backbone model's domain).

    Args:
        backbone: a :class:`~alignbench.models.backbone.FluxBackbone` (its current weights; with a
            LoRA adapter attached, the adapted policy).
        task: a loaded :class:`~alignbench.task.Task`.
        cfg: protocol settings; ``cfg.steps`` overrides ``eval_steps``.
        progress: called as ``progress(stage, done, total)`` (this process's images).
        process_index, num_processes, gather_object: under ``accelerate launch``, process r samples
            and scores the prompts p with p mod N = r, and ``gather_object`` (accelerate's: a list
            per process → the lists of all processes concatenated) brings every image, latent and
            row to every process. Each image keeps its noise seed, so the result equals a
            one-process evaluation.
    """
    progress = progress or (lambda *a: None)
    domain = getattr(backbone, "domain", "shapes")
    records = task.prompts(cfg.split, domain)
    if cfg.max_prompts:
        records = records[: cfg.max_prompts]
    ks, steps = images_per_prompt(records, cfg), cfg.steps or eval_steps
    reward = task.reward(domain)
    t0 = time.perf_counter()
    # (prompt, image) pairs of this process, in row order
    pairs = [(p, j) for p in range(process_index, len(records), num_processes) for j in range(ks[p])]
    seeds = [noise_seed(cfg.seed, p, j) for p, j in pairs]
    prompts = [records[p]["prompt"] for p, _ in pairs]
    latents, images = [], []
    for start in range(0, len(seeds), cfg.batch_size):
        sl = slice(start, start + cfg.batch_size)
        emb = backbone.encode_prompts(prompts[sl])
        lat = backbone.sample_ode(emb, seeds[sl], steps, batch_size=cfg.batch_size)
        latents.append(lat.cpu())
        img = backbone.decode(lat)
        images.append((img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        progress("sample", min(start + cfg.batch_size, len(seeds)), len(seeds))
    latents_t = torch.cat(latents) if latents else torch.zeros(0)
    images_np = np.concatenate(images) if images else np.zeros((0,), np.uint8)
    t_sample = time.perf_counter() - t0
    rows: list[dict] = []
    for start in range(0, len(seeds), 64):
        idx = range(start, min(start + 64, len(seeds)))
        metas = [records[pairs[i][0]] for i in idx]
        details = reward.details(list(images_np[idx.start:idx.stop]), [m["prompt"] for m in metas], metas)
        for i, meta, det in zip(idx, metas, details, strict=True):
            rows.append({"prompt_index": pairs[i][0], "image_index": pairs[i][1], "seed": seeds[i],
                         "tag": meta.get("tag", ""), "prompt": meta["prompt"], **det})
        progress("score", idx.stop, len(seeds))
    if num_processes > 1:
        if gather_object is None:
            raise ValueError("evaluate: num_processes > 1 needs gather_object")
        parts = gather_object([(rows, images_np, latents_t)])
        rows = [r for part in parts for r in part[0]]
        order = sorted(range(len(rows)), key=lambda i: (rows[i]["prompt_index"], rows[i]["image_index"]))
        rows = [rows[i] for i in order]
        images_np = np.concatenate([part[1] for part in parts if len(part[1])])[order]
        latents_t = torch.cat([part[2] for part in parts if len(part[2])])[order]
    offsets = np.concatenate([[0], np.cumsum(ks)]).astype(int)  # rows are ordered by (prompt, image)
    span = [slice(int(offsets[p]), int(offsets[p + 1])) for p in range(len(records))]
    per_prompt_lgmd = [lgmd(latents_t[span[p]]) for p in range(len(records))]
    from .metrics.diversity import cosine_diversity, vendi_score
    from .metrics.features import feature_extractor

    feats = feature_extractor(domain, cfg.features_source, str(getattr(backbone, 'device', 'cpu')))(images_np)
    per_prompt_cos = [cosine_diversity(feats[span[p]]) for p in range(len(records))]
    per_prompt_vendi = [vendi_score(feats[span[p]]) for p in range(len(records))]
    for r in rows:
        p_i = r["prompt_index"]
        r["lgmd"], r["cosine_diversity"], r["vendi"] = per_prompt_lgmd[p_i], per_prompt_cos[p_i], per_prompt_vendi[p_i]
    metrics = summarize_rows(rows, tuple(reward.keys))
    summary = {
        "task": task.name, "split": cfg.split, "n_prompts": len(records), "images_per_prompt": cfg.images_per_prompt,
        "n_images": len(rows), "steps": steps, "noise_seed": cfg.seed,
        "metrics": metrics,
        "standard_error": {key: (standard_error(metrics, key) if key in ("accuracy", "strict") else
                                 float(np.std([r[key] for r in rows], ddof=1) / np.sqrt(len(rows))) if len(rows) > 1
                                 else None) for key in reward.keys},
        "headline": list(task.domain(domain).metrics),  # the task's reported metrics, first = primary
        "lgmd": float(np.mean(per_prompt_lgmd)),
        "cosine_diversity": float(np.mean(per_prompt_cos)), "vendi": float(np.mean(per_prompt_vendi)),
        "seconds": {"sample": t_sample, "score": time.perf_counter() - t0 - t_sample},
    }
    return EvalResult(rows, summary, images_np, latents_t)


def write_eval(run_dir: Path, result: EvalResult, fmt: str, prefix: str = "eval", grid_prompts: int = 8) -> Path:
    """Write ``<prefix>.jsonl`` (one row per image), ``<prefix>.json`` (summary) and
    ``samples/<prefix>_grid.png`` (the first ``grid_prompts`` prompts × up to 4 images, captioned
    with the scorer's verdict); returns the grid path."""
    from .reporting.sheet import contact_sheet, save_png, tile_for

    write_jsonl(run_dir / f"{prefix}.jsonl", result.rows)
    write_json(run_dir / f"{prefix}.json", result.summary)
    k = result.summary["images_per_prompt"]
    cols = min(k, 4)
    tiles = [tile_for(fmt, result.images[i], r, r) for i, r in enumerate(result.rows)
             if r["prompt_index"] < grid_prompts and r["image_index"] < cols]
    path = run_dir / "samples" / f"{prefix}_grid.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(contact_sheet(tiles, cols=cols), path)
    return path
