"""How much reward signal does one iteration's policy gradient carry? (issue 32's one-prompt rung)

Builds the run of ``alignbench run --algo A --task T --set ...`` and, at the starting weights θ
(no optimizer step), draws N independent iterations (rollout, reward, advantage, the loss's
gradient with respect to the LoRA parameters, grad clip off). With g_n the flattened gradient of
iteration n and ḡ their mean, it prints

- the mean pairwise cosine between the gradients of two iterations, E[cos(g_i, g_j)], which is
  about SNR / (1 + SNR) for gradients that are signal plus independent noise;
- SNR = (‖ḡ‖² − tr Σ / N) / (tr Σ), with tr Σ = mean_n ‖g_n − ḡ‖²·N/(N − 1): the squared norm of
  the expected gradient over the noise of one iteration (the bias of ‖ḡ‖² removed). An update
  needs about 1/SNR iterations before the signal outweighs the noise.
- the mean and std of the iteration's training reward.

    python scripts/gradient_snr.py --algo tmpo --task sanity-geneval --n 24 --threads 2 \
        --set algo.center=true

The LoRA's B matrices start at 0, so the gradient is that of B (A is random and gets none).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


def gradient_samples(algo: str, task: str, sets: list[str], n: int, seed: int = 0,
                     start: int = 0) -> tuple[np.ndarray, list[float]]:
    """N flattened LoRA gradients, float64 [N, P], of N independent iterations at the starting
    weights, and each iteration's mean training reward."""
    from alignbench.models.spec import get_model
    from alignbench.training.trainer import Trainer, resolve_run_config, task_for_run

    cfg = resolve_run_config(algo, task, "tiny-shapes", seed,
                             overrides=[*sets, "algo.grad_clip=1e9", "algo.inner_updates=1"])
    spec = get_model("tiny-shapes", **{k: v for k, v in cfg["model"].items() if k != "name"})
    bb = spec.load("cpu")
    t = task_for_run(cfg)
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(Path(d), cfg, bb, t)
        grads: list[np.ndarray] = []
        rewards: list[float] = []

        def record(*_a, **_k):
            grads.append(torch.cat([p.grad.detach().flatten().double() for p in tr.params
                                    if p.grad is not None]).numpy())

        tr.optimizer.step = record  # no step: every iteration sees θ_old = the starting weights
        for it in range(start, start + n):
            row = tr.iteration(it)
            rewards.append(row["reward_mean"])
    return np.stack(grads), rewards


def snr(g: np.ndarray) -> dict[str, float]:
    """Signal-to-noise figures of gradient samples g, float [N, P] (see the module docstring)."""
    n = g.shape[0]
    mean = g.mean(0)
    tr_sigma = float(((g - mean) ** 2).sum(1).mean()) * n / (n - 1)
    signal = float((mean**2).sum()) - tr_sigma / n
    unit = g / np.linalg.norm(g, axis=1, keepdims=True).clip(1e-30)
    cos = unit @ unit.T
    pair = float((cos.sum() - n) / (n * (n - 1)))
    return {"snr": signal / tr_sigma, "pairwise_cos": pair, "grad_norm": float(np.linalg.norm(g, axis=1).mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algo", default="tmpo")
    ap.add_argument("--task", default="sanity-geneval")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--label", default="")
    ap.add_argument("--out", default=None, help="append one JSON line with the figures here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g, rewards = gradient_samples(a.algo, a.task, a.sets, a.n, a.seed)
    res = {"label": a.label, "algo": a.algo, "task": a.task, "sets": a.sets, "n": a.n, **snr(g),
           "reward_mean": float(np.mean(rewards)), "reward_std_over_iterations": float(np.std(rewards))}
    print(json.dumps(res))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
