"""OCR reward: the formula on known strings, and EasyOCR (offline weights) on rendered signs."""

import numpy as np
import pytest
import torch

from alignbench.errors import MetadataError
from alignbench.rewards.ocr import OcrReward, ocr_reward, ocr_target
from alignbench.world.validate import validate_ocr


@pytest.mark.parametrize("recognized, target, expected", [
    ("KTP", "KTP", 1.0),
    ("k t p", "KTP", 1.0),          # case and spaces ignored
    ("xxKTPyy", "KTP", 1.0),        # substring: distance 0
    ("KTX", "KTP", 1 - 1 / 3),      # one substitution
    ("", "KTP", 0.0),               # distance 3 = len
    ("ABCDEFGH", "KT", 0.0),        # distance capped at len(target)
    ("KP", "KTPA", 0.5),            # two insertions
])
def test_ocr_reward_known_answers(recognized, target, expected):
    assert ocr_reward(recognized, target) == pytest.approx(expected)


def test_ocr_target_is_first_quoted_text():
    assert ocr_target('a sign that says "K7P" and "X"') == "K7P"
    with pytest.raises(ValueError):
        ocr_target("a sign with no quotes")


def test_ocr_metadata_without_quotes_is_rejected():
    with pytest.raises(MetadataError, match=r"f\.jsonl:3: field 'prompt'"):
        OcrReward().validate_metadata({"prompt": "a sign"}, "f.jsonl:3")


def test_easyocr_reads_rendered_signs():
    rep = validate_ocr(10, seed=11)
    assert rep.exact >= 9, rep.errors


def test_score_returns_float_tensors_per_key():
    from alignbench.world.layout import scene_for_sign
    from alignbench.world.scene import render

    img = render(scene_for_sign("MUTE", np.random.default_rng(3)))
    batch = torch.from_numpy(np.stack([img, np.full_like(img, 128)])).permute(0, 3, 1, 2).float() / 255
    out = OcrReward().score(batch, ['a sign that says "MUTE"'] * 2, [{}, {}])
    assert set(out) == {"ocr", "exact"} and out["ocr"].dtype == torch.float32 and out["ocr"].shape == (2,)
    assert out["exact"].tolist() == [1.0, 0.0] and out["ocr"][1] == 0.0


def test_batched_detection_gives_the_readings_of_one_by_one():
    """The batched_ocr speed-up (CRAFT on a batch of images) reads exactly what image-by-image
    reading does: boxes, texts and confidences, on clean signs, noisy signs and a blank image,
    with a batch that does not divide the image count."""
    from alignbench.perf import speedups
    from alignbench.world.prompts import ocr_splits
    from alignbench.world.sample import render_records

    _, test = ocr_splits()
    imgs = render_records(test[:4], "ocr", seed=5)
    rng = np.random.default_rng(0)
    imgs += [np.clip(i.astype(int) + rng.integers(-70, 70, i.shape), 0, 255).astype(np.uint8) for i in imgs[:2]]
    imgs.append(np.full_like(imgs[0], 200))
    reward = OcrReward()
    batched = reward.read_many(imgs, batch=3)
    with speedups(False):
        one_by_one = reward.read_many(imgs)
    assert batched == one_by_one
    assert sum(bool(text) for text, _ in batched) >= 4 and batched[-1] == ("", [])
