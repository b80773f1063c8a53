"""The dev split (issue 32): train-split prompts held out of training and scored during `run` for a
learning curve that is not the test split; the sanity tasks and their reward."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from alignbench.cli import app
from alignbench.evaluation import EvalConfig, dev_config, images_per_prompt
from alignbench.reporting.sheet import tile_for
from alignbench.rewards.base import BrightnessReward
from alignbench.task import dev_holdout, get_task
from alignbench.training.trainer import resolve_run_config, run_holdout_dev


def _records(counts: dict[str, int]) -> list[dict]:
    return [{"tag": tag, "prompt": f"{tag} prompt {i}"} for tag, n in counts.items() for i in range(n)]


def test_dev_holdout_takes_a_tenth_of_each_tag_at_least_one_at_most_eight_and_ignores_file_order():
    train = _records({"a": 1, "b": 3, "c": 30, "d": 200})
    held = dev_holdout(train)
    assert Counter(train[i]["tag"] for i in held) == {"b": 1, "c": 3, "d": 8}  # a: its only prompt stays
    shuffled = train[:]
    random.Random(0).shuffle(shuffled)
    assert {shuffled[i]["prompt"] for i in dev_holdout(shuffled)} == {train[i]["prompt"] for i in held}


def test_geneval_dev_split_covers_the_six_tags_with_over_500_images_and_is_never_trained_on():
    task = get_task("geneval")
    dev, training = task.prompts("dev"), task.training_prompts()
    assert {r["tag"] for r in dev} == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert not {r["prompt"] for r in dev} & {r["prompt"] for r in training}
    assert len(dev) + len(training) == len(task.prompts("train"))
    assert not {r["prompt"] for r in dev} & {r["prompt"] for r in task.prompts("test")}
    cfg = dev_config(EvalConfig())
    assert cfg.split == "dev" and cfg.seed == 1
    assert sum(images_per_prompt(dev, cfg)) >= 500
    # a task that names its dev file keeps its whole train split
    sanity = get_task("sanity-geneval")
    assert sanity.prompts("dev") == sanity.training_prompts() == sanity.prompts("train")


def test_configs_written_before_holdout_dev_resume_on_the_whole_train_split():
    cfg = resolve_run_config("tmpo", "geneval", "tiny-shapes", 0)
    assert cfg["protocol"]["holdout_dev"] is True and run_holdout_dev(cfg["protocol"])
    old = {k: v for k, v in cfg["protocol"].items() if k != "holdout_dev"}
    assert run_holdout_dev(old) is False


def test_brightness_reward_is_the_mean_pixel_value():
    black, white = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)
    half = np.zeros((8, 8, 3), np.uint8)
    half[:, :4] = 255
    out = BrightnessReward().score([black, white, half], ["p"] * 3, [{}] * 3)["brightness"]
    assert out.tolist() == pytest.approx([0.0, 1.0, 0.5])


def test_a_reward_without_detections_on_a_geneval_task_gets_a_plain_tile():
    tile = tile_for("geneval", np.zeros((8, 8, 3), np.uint8), {"prompt": "a photo of a cat"}, {"brightness": 0.25})
    assert tile.boxes == [] and tile.ok is None and "brightness 0.250" in tile.caption[1]


def test_run_scores_the_dev_split_before_training_and_every_k_iterations(tmp_path):
    tiny = ["--set", "eval.steps=4", "--set", "protocol.train_steps=4", "--set", "protocol.group_size=4",
            "--set", "algo.children=2", "--set", "algo.early=[1,2]", "--set", "algo.late=[1,2]", "--set", "algo.s_max=2",
            "--set", "eval.images_per_prompt=3", "--set", "eval.dev_images_per_prompt=3", "--set", "eval.dev_seed=0",
            "--set", "eval.dev_every=2"]
    res = CliRunner().invoke(app, ["run", "--algo", "tmpo", "--task", "sanity-brightness", "--iterations", "3",
                                   "--out", str(tmp_path), *tiny])
    assert res.exit_code == 0, res.output
    (run,) = [p.parent for p in Path(tmp_path).rglob("run.json")]
    dev = [json.loads(line) for line in (run / "dev.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in dev] == [0, 2, 3]
    base, final = (json.loads((run / f).read_text()) for f in ("eval_base.json", "eval.json"))
    # with the test split's noises and image count, the dev points at 0 and at the end are the two evaluations
    assert dev[0]["brightness"] == pytest.approx(base["metrics"]["overall"]["brightness"], abs=1e-6)
    assert dev[-1]["brightness"] == pytest.approx(final["metrics"]["overall"]["brightness"], abs=1e-6)
    assert dev[-1]["n_images"] == 3 and "cosine_diversity" in dev[-1]


def test_one_prompt_fills_several_groups_only_with_prompt_replacement(tmp_path):
    tiny = ["--set", "eval.steps=2", "--set", "protocol.train_steps=4", "--set", "protocol.group_size=4",
            "--set", "algo.children=2", "--set", "algo.early=[1,2]", "--set", "algo.late=[1,2]", "--set", "algo.s_max=2",
            "--set", "eval.images_per_prompt=2", "--set", "protocol.prompts_per_iteration=2"]
    base = ["run", "--algo", "tmpo", "--task", "sanity-brightness", "--iterations", "1",
            "--out", str(tmp_path), *tiny]
    refused = CliRunner().invoke(app, base)
    assert refused.exit_code == 2 and "protocol.prompt_replacement=true" in refused.output
    res = CliRunner().invoke(app, [*base, "--set", "protocol.prompt_replacement=true"])
    assert res.exit_code == 0, res.output
    (run,) = [p.parent for p in Path(tmp_path).rglob("summary.json")]
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert row["prompt_indices"] == [0, 0] and row["leaves"] == 8  # two groups of the one prompt


def test_antithetic_branches_mirror_the_noise_of_sibling_pairs(tmp_path, monkeypatch):
    import alignbench.training.trainer as trainer_mod
    from alignbench.models.spec import get_model
    from alignbench.training.trainer import Trainer

    seen = []
    real_execute = trainer_mod.execute

    def spy(*args, **kwargs):
        out = real_execute(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(trainer_mod, "execute", spy)
    sets = ["protocol.train_steps=4", "protocol.group_size=9", "algo.early=[1,2]", "algo.late=[1,2]",
            "algo.s_min=1", "algo.s_max=2", "algo.root_threshold=-1", "eval.images_per_prompt=2",
            "protocol.antithetic=true"]
    cfg = resolve_run_config("tmpo", "sanity-brightness", "tiny-shapes", 0, overrides=sets)
    spec = get_model("tiny-shapes")
    trainer = Trainer(tmp_path, cfg, spec.load("cpu"), get_task("sanity-brightness"))
    trainer.iteration(0)
    (ro,) = seen
    noise = (ro.x_next - ro.mean).flatten(1)  # s·ξ of every trained edge
    for step in ro.step.unique().tolist():
        idx = (ro.step == step).nonzero().flatten()
        for node in ro.parent[idx].unique().tolist():
            c = idx[ro.parent[idx] == node]  # the 3 children of one branch point, in child order
            assert len(c) == 3
            assert torch.allclose(noise[c[0]], -noise[c[1]], atol=1e-5)  # ξ and −ξ
            cos = torch.nn.functional.cosine_similarity(noise[c[0]], noise[c[2]], dim=0)
            assert abs(float(cos)) < 0.2  # the third child draws its own ξ


def test_dev_every_on_a_task_without_dev_prompts_is_one_line(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    task = tmp_path / "one.yaml"
    task.write_text(f"""name: one
description: one prompt, no dev file
format: geneval
domains:
  shapes:
    prompts: {{train: {repo / 'tasks/data/sanity_two_object.jsonl'}, test: {repo / 'tasks/data/sanity_two_object.jsonl'}}}
    reward: brightness
    train_reward: brightness
    metrics: [brightness]
""")
    res = CliRunner().invoke(app, ["run", "--task", str(task), "--iterations", "1", "--out", str(tmp_path / "runs"),
                                   "--set", "protocol.prompts_per_iteration=1", "--set", "eval.dev_every=1"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "eval.dev_every" in lines[0], res.output
    assert not list((tmp_path / "runs").rglob("metrics.jsonl"))


@pytest.mark.parametrize("name", ["sanity-geneval", "sanity-geneval-count", "sanity-brightness"])
def test_one_prompt_sanity_tasks_train_on_a_geneval_train_prompt_never_in_test(name):
    geneval = get_task("geneval")
    (record,) = get_task(name).prompts("train")
    assert record in geneval.prompts("train")
    assert record["prompt"] not in {r["prompt"] for r in geneval.prompts("test")}
