"""Natural-domain tasks (issue 18, item 3): Hub prompt sets with Flow-GRPO's filter, the natural OCR
prompts, and multi-reward tasks whose components are each reported."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from alignbench.errors import UserError
from alignbench.natural_prompts import OCR_NOUNS, ocr_natural_splits
from alignbench.task import HubPrompts, get_task, hub_prompt_files, load_task_file

DATA = Path(__file__).resolve().parents[1] / "tasks" / "data"


def test_natural_ocr_prompts_have_disjoint_vocabularies_and_match_the_shipped_files():
    train, test = ocr_natural_splits()
    assert len(test) == 1024 and len(train) == 4096
    assert len({r["prompt"] for r in test}) == 1024
    nouns = set(OCR_NOUNS)

    def words(rs):
        return {w.lower() for r in rs for w in r["text"].split() if w.lower() in nouns}

    assert not words(train) & words(test)
    assert all(f'"{r["text"]}"' in r["prompt"] for r in train + test)
    for split, recs in (("train", train), ("test", test)):
        assert (DATA / f"ocr_natural_{split}.jsonl").read_text() == "".join(json.dumps(r) + "\n" for r in recs)
    assert get_task("ocr").domain("natural").reward == "ocr-natural"


def test_hub_prompts_filter_deduplicate_split_and_cache(tmp_path, monkeypatch):
    import datasets

    captions = ["a b c d e f", "a b c d e f", "too short", None, *[f"prompt number {i} with five spaces" for i in range(10)]]
    calls = []

    def fake_load(name, split, revision):
        calls.append((name, split, revision))
        return datasets.Dataset.from_dict({"caption": captions, "other": list(range(len(captions)))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(tmp_path))
    spec = HubPrompts(dataset="someone/prompts", test_size=3, seed=1)
    files = hub_prompt_files(spec)
    test = [json.loads(x)["prompt"] for x in files["test"].read_text().splitlines()]
    train = [json.loads(x)["prompt"] for x in files["train"].read_text().splitlines()]
    # "a b c d e f" has exactly 5 spaces (kept once); "too short" and None are dropped
    assert len(test) == 3 and len(train) == 8 and sorted(test + train) == sorted({*captions[:1], *captions[4:]})
    assert hub_prompt_files(spec) == files and len(calls) == 1  # cached
    assert hub_prompt_files(HubPrompts(dataset="someone/prompts", test_size=3, seed=2))["test"] != files["test"]
    with pytest.raises(UserError, match="prompts.column: 'text' is not a column of 'someone/prompts'; allowed: caption, other"):
        hub_prompt_files(HubPrompts(dataset="someone/prompts", column="text"))


def test_hub_prompts_offline_is_one_line_naming_the_dataset(tmp_path, monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(tmp_path))
    with pytest.raises(UserError) as info:
        get_task("pickscore").prompts("train", "natural")
    assert "'yuvalkirstain/pickapic_v1_no_images'" in str(info.value) and "\n" not in str(info.value)


REWARDS = '''
import torch
from alignbench.rewards.base import Reward
class Mean(Reward):
    keys = ("mean",)
    def score(self, images, prompts, metadata):
        return {"mean": torch.tensor([float(im.float().mean()) for im in images])}
class Red(Reward):
    keys = ("red", "red_max")
    def score(self, images, prompts, metadata):
        return {"red": torch.tensor([float(im[0].float().mean()) for im in images]),
                "red_max": torch.tensor([float(im[0].max()) for im in images])}
'''


def test_multi_reward_is_the_weighted_sum_of_first_sub_scores_and_reports_every_component(tmp_path, monkeypatch):
    (tmp_path / "two_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n')
    (tmp_path / "multi.yaml").write_text(textwrap.dedent("""\
        name: multi
        description: two rewards
        format: prompt
        domains:
          natural:
            prompts: {train: p.jsonl, test: p.jsonl}
            reward: {"two_rewards:Mean": 0.5, "two_rewards:Red": 2.0}
            train_reward: total
            metrics: [total, mean, red]
        """))
    task = load_task_file(tmp_path / "multi.yaml")
    reward = task.reward("natural")
    assert reward.keys == ("total", "mean", "red", "red_max")
    img = torch.zeros(2, 3, 4, 4)
    img[0, 0] = 1.0
    img[1] = 0.5
    s = reward.score(img, ["x", "x"], [{}, {}])
    torch.testing.assert_close(s["mean"], torch.tensor([1 / 3, 0.5]))
    torch.testing.assert_close(s["red"], torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(s["total"], 0.5 * s["mean"] + 2.0 * s["red"])
    from alignbench.training.trainer import reward_keys

    assert reward_keys(task, "natural") == ("total", "mean", "red", "red_max")
