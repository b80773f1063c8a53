"""The evaluation protocol, LGMD, the VAE check and the `eval` / `vae-check` commands on a micro model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignbench.evaluation import EvalConfig, evaluate, noise_seed
from alignbench.metrics.diversity import lgmd
from alignbench.models.spec import get_model
from alignbench.models.tiny import TinyFluxConfig, build_tiny_pipeline
from alignbench.registry import models

MICRO = TinyFluxConfig(vae_channels=(8, 8, 8), text_dim=16, text_heads=2, num_layers=1, num_single_layers=1,
                       attention_head_dim=8, num_attention_heads=2, axes_dims_rope=(2, 2, 4))


def test_lgmd_known_answers():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 64, 16, generator=g)
    assert lgmd(z) == pytest.approx(math.log(math.sqrt(2)), abs=0.01)  # ≈ 0.35
    assert lgmd(z[:1].repeat(4, 1, 1)) == pytest.approx(math.log(1e-8))
    two = torch.stack([torch.zeros(100), torch.full((100,), 2.0)])  # distance 2·√D / √D = 2
    assert lgmd(two) == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError, match="at least 2"):
        lgmd(z[:1])


def test_noise_seeds_are_distinct_and_stable():
    seeds = {noise_seed(0, p, j) for p in range(50) for j in range(4)}
    assert len(seeds) == 200 and noise_seed(0, 3, 1) == noise_seed(0, 3, 1) != noise_seed(1, 3, 1)


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("micro") / "pipe"
    build_tiny_pipeline(MICRO, seed=0).save_pretrained(path)
    spec = get_model("tiny-shapes").model_copy(update={"source": str(path), "name": "micro-test", "eval_steps": 2})
    models.register("micro-test", spec, replace=True)
    return spec


def test_evaluate_scores_every_prompt_image_with_fixed_noises(micro_model):
    from alignbench.task import get_task

    bb = micro_model.load()
    task = get_task("geneval")
    cfg = EvalConfig(images_per_prompt=2, max_prompts=3, batch_size=4)
    res = evaluate(bb, task, cfg, eval_steps=2)
    assert len(res.rows) == 6 and res.images.shape == (6, 64, 64, 3) and res.latents.shape == (6, 64, 16)
    assert [(r["prompt_index"], r["image_index"]) for r in res.rows] == [(p, j) for p in range(3) for j in range(2)]
    assert res.rows[3]["seed"] == noise_seed(0, 1, 1)
    # same noises, same images, whatever the batch size
    again = evaluate(bb, task, EvalConfig(images_per_prompt=2, max_prompts=3, batch_size=5), eval_steps=2)
    assert torch.allclose(res.latents, again.latents, atol=1e-5)
    assert torch.allclose(res.latents[3], bb.sample_ode(bb.encode_prompts([res.rows[3]["prompt"]]),
                                                        [res.rows[3]["seed"]], 2)[0], atol=1e-5)
    s = res.summary
    assert s["n_images"] == 6 and s["steps"] == 2 and "overall" in s["metrics"]
    assert s["lgmd"] == pytest.approx(sum(lgmd(res.latents[2 * p:2 * p + 2]) for p in range(3)) / 3)
    from alignbench.metrics.diversity import cosine_diversity
    from alignbench.metrics.features import pooled_pixels

    feats = pooled_pixels(res.images)
    assert s["cosine_diversity"] == pytest.approx(sum(cosine_diversity(feats[2 * p:2 * p + 2]) for p in range(3)) / 3)
    assert 1.0 <= s["vendi"] <= 2.0 and res.rows[0]["vendi"] == res.rows[1]["vendi"]


def test_eval_command_writes_a_run_directory(micro_model, tmp_path):
    from typer.testing import CliRunner

    from alignbench.cli import app

    r = CliRunner().invoke(app, ["eval", "--model", "micro-test", "--task", "ocr", "--max-prompts", "2",
                                 "--images-per-prompt", "2", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    (run,) = (tmp_path / "ocr" / "micro-test" / "base").iterdir()
    assert run.name.startswith("seed0-")
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished" and meta["kind"] == "eval" and meta["config"]["model"]["name"] == "micro-test"
    summary = json.loads((run / "eval.json").read_text())
    assert summary["n_images"] == 4 and set(summary["metrics"]["overall"]) >= {"ocr", "exact"}
    rows = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("lgmd" in row and "ocr" in row for row in rows)
    assert (run / "samples" / "eval_grid.png").stat().st_size > 1000
    assert "LGMD" in r.output


@pytest.mark.parametrize("args,field", [
    (["--task", "nope"], "nope"),
    (["--model", "flux"], "flux-dev"),
    (["--set", "model.dtype=int8"], "model.dtype"),
    (["--set", "eval.steps=3"], "allowed: model"),
    (["--split", "val"], "--split"),
])
def test_eval_bad_input_is_one_line(args, field, tmp_path):
    from typer.testing import CliRunner

    from alignbench.cli import app

    r = CliRunner().invoke(app, ["eval", "--out", str(tmp_path), *args])
    assert r.exit_code == 2 and field in r.output and "Traceback" not in r.output
    assert not any(tmp_path.iterdir())


def test_vae_check_scores_originals_exactly_and_reports_what_an_untrained_vae_loses(micro_model):
    from alignbench.models.vae_check import vae_check
    from alignbench.task import get_task

    bb = micro_model.load()
    rep = vae_check(bb, get_task("geneval"), n=6, seed=0)
    originals, recon = rep.pop("images")
    assert originals.shape == recon.shape == (6, 64, 64, 3)
    assert rep["accuracy_original"] == 1.0  # the detector reads rendered scenes exactly
    assert rep["accuracy_reconstructed"] < 0.5 and rep["psnr_db"] < 20  # an untrained VAE loses the scene
    assert 0 <= rep["color_kept"] <= 1 and rep["objects"] >= 6


def test_eval_takes_the_task_files_image_count_unless_the_option_is_given(micro_model, tmp_path):
    from importlib import resources

    from typer.testing import CliRunner

    from alignbench.cli import app

    prompts = resources.files("alignbench.tasks") / "data" / "sanity_two_object.jsonl"
    yaml = tmp_path / "one.yaml"
    yaml.write_text(f"name: one\ndescription: one prompt\nformat: geneval\ndomains:\n  shapes:\n    prompts: {{train: {prompts}, test: {prompts}}}\n"
                    "    reward: brightness\n    train_reward: brightness\n    metrics: [brightness]\n"
                    "defaults:\n  eval: {images_per_prompt: 3}\n")
    counts = []
    for extra in ([], ["--images-per-prompt", "2"]):
        out = tmp_path / f"out{len(extra)}"
        r = CliRunner().invoke(app, ["eval", "--model", "micro-test", "--task", str(yaml), "--out", str(out), *extra])
        assert r.exit_code == 0, r.output
        (run,) = (out / "one" / "micro-test" / "base").iterdir()
        counts.append(json.loads((run / "eval.json").read_text())["n_images"])
    assert counts == [3, 2]
