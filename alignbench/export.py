"""``alignbench export``: a finished (or checkpointed) run's LoRA in diffusers' format.

The run keeps its adapter as peft parameters named after alignbench's adapter
(``transformer_blocks.0.attn.to_q.lora_A.alignbench.weight``). The export writes them with the
pipeline class's own ``save_lora_weights`` (``FluxPipeline.save_lora_weights``), i.e. the file
``pytorch_lora_weights.safetensors`` with the ``transformer.``-prefixed keys that
``pipe.load_lora_weights(DIR)`` expects, and the adapter's rank, α and target modules as the
file's LoRA metadata, so that the loaded adapter has the run's scale α/r. A short model card
(``README.md``) says what it is and how it was made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import UserError

ADAPTER = "alignbench"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def _lora_tensors(run_dir: Path, ema: bool) -> tuple[dict[str, Any], int]:
    """{peft parameter name: tensor} of the run's EMA (``adapter.safetensors``) or raw (``state.pt``)
    LoRA, and the iterations it has seen."""
    ck = run_dir / "checkpoint"
    if ema:
        from safetensors import safe_open

        path = ck / "adapter.safetensors"
        if not path.is_file():
            raise UserError(f"export: '{run_dir}' has no checkpoint/adapter.safetensors (no iteration finished yet)")
        with safe_open(str(path), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
            done = int((f.metadata() or {}).get("iterations_done", -1))
        return tensors, done
    from .io import load_checkpoint_file

    path = ck / "state.pt"
    if not path.is_file():
        raise UserError(f"export: '{run_dir}' has no checkpoint/state.pt (no iteration finished yet)")
    state = load_checkpoint_file(path)
    return dict(zip(state["names"], state["lora"], strict=True)), int(state["iterations_done"])


def diffusers_lora_state(tensors: dict[str, Any]) -> dict[str, Any]:
    """peft names with alignbench's adapter name → diffusers/peft names without it
    (``…to_q.lora_A.alignbench.weight`` → ``…to_q.lora_A.weight``); the ``transformer.`` prefix is
    added by ``save_lora_weights``."""
    return {k.replace(f".{ADAPTER}.", "."): v.detach().cpu().contiguous() for k, v in tensors.items()}


def export_lora(run_dir: str | Path, out: str | Path, ema: bool = True) -> dict[str, Any]:
    """Write the run's LoRA in diffusers' format into ``out``; returns what was written.

    Args:
        run_dir: a training run directory (``run.json`` + ``checkpoint/``).
        out: destination directory (created).
        ema: the EMA weights (what the run evaluates) or the raw trained weights.

    Returns:
        ``{"path", "tensors", "iterations", "rank", "alpha", "ema"}``.

    Raises:
        UserError: not a training run directory, or no checkpoint yet.
    """
    from diffusers import FluxPipeline

    run_dir, out = Path(run_dir), Path(out)
    meta_path = run_dir / "run.json"
    if not meta_path.is_file():
        raise UserError(f"export: '{run_dir}' is not a run directory (no run.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") != "train":
        raise UserError(f"export: '{run_dir}' is not a training run (kind '{meta.get('kind')}'); only training runs have a LoRA")
    cfg = meta["config"]
    family = cfg["model"].get("family", "flux")
    if family != "flux":
        raise UserError(f"export: model family '{family}' is not supported; allowed: flux")
    tensors, done = _lora_tensors(run_dir, ema)
    state = diffusers_lora_state(tensors)
    from .models.backbone import LORA_TARGETS
    from .models.spec import ModelSpec

    layers = {k.split(".lora_")[0] for k in state}
    targets = [t for t in LORA_TARGETS[family] if any(n.endswith("." + t) for n in layers)]
    proto = cfg["protocol"]
    lora_meta = {"r": int(proto["lora_rank"]), "lora_alpha": float(proto["lora_alpha"]),
                 "target_modules": sorted(layers)}
    out.mkdir(parents=True, exist_ok=True)
    FluxPipeline.save_lora_weights(out, transformer_lora_layers=state, weight_name=WEIGHT_NAME,
                                   transformer_lora_adapter_metadata=lora_meta)
    final = run_dir / "eval.json"
    metrics = json.loads(final.read_text()).get("metrics", {}).get("overall", {}) if final.is_file() else {}
    model = cfg["model"]
    source = ModelSpec(**model).resolved_source()
    card = [
        f"# LoRA: {cfg.get('algorithm')} on {cfg.get('task')} ({model['name']})", "",
        f"Trained with alignbench ({meta.get('environment', {}).get('git_commit') or 'unknown commit'}); "
        f"{'EMA' if ema else 'raw (non-EMA)'} weights after {done} iteration(s).", "",
        f"- base model: `{source}` (alignbench model `{model['name']}`, revision `{model.get('revision')}`)",
        f"- algorithm: `{cfg.get('algorithm')}`; task: `{cfg.get('task')}`; seed {cfg.get('seed')}",
        f"- LoRA: rank {proto['lora_rank']}, α {proto['lora_alpha']:g} (scale {proto['lora_alpha'] / proto['lora_rank']:g}), "
        f"{len(layers)} adapted layers ({', '.join(targets)})",
        f"- command: `{meta.get('environment', {}).get('command', 'not recorded')}`",
        f"- run status: {meta.get('status')}; run directory: `{run_dir}`",
    ]
    if metrics:
        card.append("- final test metrics (alignbench eval protocol): "
                    + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, int | float) and k != "n"))
    card += ["", "Load it into the base pipeline:", "", "```python",
             "from diffusers import FluxPipeline",
             f"pipe = FluxPipeline.from_pretrained(\"{source}\")",
             f"pipe.load_lora_weights(\"{out}\")", "```", ""]
    (out / "README.md").write_text("\n".join(card), encoding="utf-8")
    return {"path": out / WEIGHT_NAME, "tensors": len(state), "iterations": done, "rank": proto["lora_rank"],
            "alpha": proto["lora_alpha"], "ema": ema}
