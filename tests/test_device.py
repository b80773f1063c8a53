"""The engine on an accelerator: marked ``gpu`` and off by default; run ``pytest -m gpu`` on a CUDA
machine. ``ALIGNBENCH_TEST_DEVICE`` picks another device (``ALIGNBENCH_TEST_DEVICE=cpu pytest -m gpu``
checks the tests themselves on a machine without one).

What can go wrong only off the CPU: batch-dependent GPU kernels that break the ratio-is-one
invariant between the batched rollout and the update's recompute, tensors left on the wrong device
(noise is drawn on the CPU from seeded generators and moved), and non-finite values under GPU math.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from typer.testing import CliRunner

from alignbench.cli import app
from alignbench.models.backbone import FluxBackbone
from alignbench.models.tiny import TinyFluxConfig, build_tiny_pipeline
from alignbench.sampling.plan import RolloutPlan, StepSpec, execute, recompute_log_prob

DEVICE = os.environ.get("ALIGNBENCH_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no CUDA device")]

MICRO = TinyFluxConfig(vae_channels=(8, 8, 8), text_dim=16, text_heads=2, num_layers=1, num_single_layers=1,
                       attention_head_dim=8, num_attention_heads=2, axes_dims_rope=(2, 2, 4))
TINY = ["--set", "eval.max_prompts=2", "--set", "eval.images_per_tag=null", "--set", "eval.images_per_prompt=3", "--set", "eval.steps=4",
        "--set", "protocol.train_steps=4", "--set", "protocol.group_size=4", "--set", "protocol.prompts_per_iteration=1"]
TMPO_TINY = ["--set", "algo.children=2", "--set", "algo.early=[1,2]", "--set", "algo.late=[1,2]", "--set", "algo.s_max=2"]


def _tmpo_plan() -> RolloutPlan:
    steps = [StepSpec("ode") for _ in range(5)]
    steps[1] = StepSpec("cps", 0.7, 3, True)
    steps[3] = StepSpec("cps", 0.7, 3, True)
    return RolloutPlan(3, steps)


def _chain() -> RolloutPlan:
    return RolloutPlan(4, [StepSpec("flow_sde", 0.9, 1, i < 2) for i in range(3)])


@pytest.mark.parametrize("plan", [_chain(), _tmpo_plan()], ids=["flow_grpo-chain", "tmpo-tree"])
def test_recompute_on_the_device_equals_the_batched_rollout(plan):
    bb = FluxBackbone(build_tiny_pipeline(MICRO, seed=3), 64, 64, max_sequence_length=20, device=DEVICE)
    emb = bb.encode_prompts(["a photo of a red ring", "a photo of two squares"])
    seeds = [[10 * p + r for r in range(plan.n_roots)] for p in range(2)]
    ro = execute(bb, plan, emb, seeds, generator=torch.Generator().manual_seed(2))
    assert ro.log_prob.device.type == torch.device(DEVICE).type
    lp, mean = recompute_log_prob(bb, ro, emb)
    # the update recomputes edges in other batch shapes than the rollout's depth batches
    assert torch.allclose(lp, ro.log_prob, atol=1e-5, rtol=0), (lp - ro.log_prob).abs().max()
    assert torch.allclose(mean, ro.mean, atol=1e-5)


@pytest.mark.parametrize("algo,extra", [("tmpo", TMPO_TINY), ("flow_grpo", [])])
def test_run_trains_and_evaluates_on_the_device(tmp_path, algo, extra):
    res = CliRunner().invoke(app, ["run", "--algo", algo, "--task", "geneval", "--iterations", "2", "--device", DEVICE,
                                   "--out", str(tmp_path), *TINY, *extra])
    assert res.exit_code == 0, res.output
    run_dir = next(tmp_path.rglob("metrics.jsonl")).parent
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        for k in ("reward_mean", "loss", "grad_norm", "approx_kl"):
            assert math.isfinite(r[k]), (k, r)
        assert r["grad_norm"] > 0
    assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
    assert "accuracy" in json.loads((run_dir / "eval.json").read_text())["metrics"]["overall"]


def test_pretrain_on_the_device_saves_a_pipeline_that_loads_on_the_cpu(tmp_path):
    import yaml
    from diffusers import FluxPipeline

    cfg = tmp_path / "micro.yaml"
    cfg.write_text(yaml.safe_dump({"model": MICRO.model_dump(mode="json"), "vae_steps": 4, "vae_batch": 4, "steps": 4,
                                   "batch": 4, "pool_size": 16, "warmup": 2, "checkpoint_every": 2}))
    res = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "run"), "--config", str(cfg),
                                   "--device", DEVICE])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "pretrain.json").read_text())
    assert summary["throughput_images_per_s"]["flow"] > 0
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log and all(math.isfinite(r["loss"]) for r in log)
    pipe = FluxPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    image = pipe("a photo of a red ring", height=64, width=64, num_inference_steps=2, max_sequence_length=20,
                 output_type="pt").images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
