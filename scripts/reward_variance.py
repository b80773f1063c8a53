"""Where does a group's reward variance come from? Between initial noises or from SDE noise?

For each of P train prompts: R independent initial noises; ODE steps everywhere except one branch
step s, where every root draws M children with the given kernel and η. The reward variance of the
R·M leaves splits (law of total variance) into the variance of the root means (fixed by x_T and the
ODE prefix, which no SDE-step log-prob can credit) and the mean variance within a root (created by
the one stochastic step s, which is what a policy gradient on step s can use). Prints, per branch
step, both parts of the training reward and of GenEval accuracy, averaged over prompts.

    python scripts/reward_variance.py --source results/pretrain/v2d/pipeline --steps 0,2,4,6 \
        --prompts 24 --roots 4 --children 4 --threads 2
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from alignbench.models.spec import get_model
from alignbench.sampling.plan import RolloutPlan, StepSpec, execute
from alignbench.task import get_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True)
    ap.add_argument("--task", default="geneval")
    ap.add_argument("--steps", default="0,2,4,6")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--roots", type=int, default=4)
    ap.add_argument("--children", type=int, default=4)
    ap.add_argument("--kernel", default="cps")
    ap.add_argument("--eta", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the per-prompt rows as JSON lines here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = get_model("tiny-shapes", source=a.source, revision="diagnostic")
    bb = spec.load("cpu")
    task = get_task(a.task)
    reward = task.reward(spec.domain)
    prompts = task.prompts("train", spec.domain)
    rng = np.random.default_rng(a.seed)
    chosen = [prompts[i] for i in rng.choice(len(prompts), a.prompts, replace=False)]
    embeds = bb.encode_prompts([r["prompt"] for r in chosen])
    roots = rng.integers(0, 2**62, size=(a.prompts, a.roots)).tolist()  # the same x_T for every s
    T = spec.train_steps
    rows = []
    for s in [int(x) for x in a.steps.split(",")]:
        steps = [StepSpec("ode") for _ in range(T)]
        steps[s] = StepSpec(a.kernel, a.eta, a.children, False)
        plan = RolloutPlan(a.roots, steps)
        ro = execute(bb, plan, embeds, roots, generator=torch.Generator().manual_seed(a.seed + 1000 * s))
        imgs = (bb.decode(ro.leaves).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for p, rec in enumerate(chosen):
            idx = (ro.leaf_prompt == p).nonzero().flatten().tolist()
            out = reward.score([imgs[i] for i in idx], [rec["prompt"]] * len(idx), [rec] * len(idx))
            row = {"branch_step": s, "prompt": rec["prompt"], "tag": rec.get("tag")}
            for k, v in out.items():
                x = v.float().numpy().reshape(a.roots, a.children)
                row[k] = {"mean": float(x.mean()), "total": float(x.var()),
                          "between": float(x.mean(1).var()), "within": float(x.var(1).mean())}
            rows.append(row)
        keys = [k for k in rows[-1] if isinstance(rows[-1][k], dict)]
        mine = [r for r in rows if r["branch_step"] == s]
        parts = []
        for k in keys:
            tot = np.mean([r[k]["total"] for r in mine])
            wi = np.mean([r[k]["within"] for r in mine])
            parts.append(f"{k}: mean {np.mean([r[k]['mean'] for r in mine]):.3f} var {tot:.4f} "
                         f"within {wi:.4f} ({wi / tot if tot else float('nan'):.0%})")
        print(f"branch step {s} (σ {float(bb.sigmas(T)[s]):.3f}): " + "; ".join(parts), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
