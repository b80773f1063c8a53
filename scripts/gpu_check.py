"""The ratio-is-one invariant on FLUX.1-dev's real transformer shapes (random weights, no download):
sample a TMPO-like tree (3 roots, cps branch points at steps 1 and 3 with 3 children) for 2 prompts
with a LoRA attached, recompute every trained transition's log-prob, print and write max |ratio − 1|
and the seconds taken (issue 19, item 5). On the CPU, --scale and --size shrink it for a dry run.

    python scripts/gpu_check.py --device cuda --out results/bench/gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from alignbench.models.spec import get_model
from alignbench.sampling.plan import RolloutPlan, StepSpec, execute, recompute_log_prob


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="flux-dev-random")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--text", type=int, default=None, help="T5 tokens (default: the model's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    over = {"scale": args.scale, "dtype": args.dtype, "height": args.size, "width": args.size}
    if args.text:
        over["max_sequence_length"] = args.text
    t0 = time.perf_counter()
    backbone = get_model(args.model, **over).load(args.device)
    backbone.add_lora(64, 128, seed=0)
    built = time.perf_counter() - t0
    steps = [StepSpec("ode") for _ in range(6)]
    steps[1] = StepSpec("cps", 0.7, 3, True)
    steps[3] = StepSpec("cps", 0.7, 3, True)
    plan = RolloutPlan(3, steps)
    emb = backbone.encode_prompts(["a photo of a cat", "a red bus in the rain"])
    t1 = time.perf_counter()
    with torch.no_grad():
        ro = execute(backbone, plan, emb, [[0, 1, 2], [3, 4, 5]], generator=torch.Generator().manual_seed(0))
    t2 = time.perf_counter()
    with torch.no_grad():
        lp, _ = recompute_log_prob(backbone, ro, emb)
    t3 = time.perf_counter()
    ratio = torch.exp(lp.float() - ro.log_prob.float())
    result = {"model": args.model, "dtype": args.dtype, "scale": args.scale, "size": args.size,
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
              "edges": int(lp.numel()), "max_abs_ratio_minus_1": float((ratio - 1).abs().max()),
              "mean_abs_log_ratio": float((lp.float() - ro.log_prob.float()).abs().mean()),
              "seconds": {"build": built, "rollout": t2 - t1, "recompute": t3 - t2}}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
