"""GenEval's natural domain (issue 18, item 2): the official prompt set drawn by alignbench's own
generator, mmdetection's Mask2Former post-processing with known answers, GenEval's colour crop, the
rules on COCO detections, and the reward loaded from a directory with tiny random models."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from alignbench.natural_prompts import COCO80, geneval_suite, geneval_train_suite  # noqa: E402
from alignbench.rewards.geneval import Detection, parse_metadata, score_detections  # noqa: E402
from alignbench.rewards.natural_geneval import color_crop, instance_detections  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tasks" / "data"
#: SHA-256 of tasks/data/geneval_natural_test.jsonl as generated here (seed 43). GenEval's own
#: evaluation_metadata.jsonl could not be fetched on the development machine (no network), so this
#: pins the generator; the counts and first prompts below are GenEval's published ones.
TEST_SHA256 = "5c48e0813e812e3c373fa5c8ed07a8f0a483be30272b4427b0559c8048e67c13"


def test_geneval_generator_reproduces_the_official_553_prompts():
    suite = geneval_suite(43)
    assert Counter(r["tag"] for r in suite) == {"single_object": 80, "two_object": 99, "counting": 80,
                                                 "colors": 94, "position": 100, "color_attr": 100}
    assert [r["prompt"] for r in suite[:4]] == ["a photo of a bench", "a photo of a cow", "a photo of a bicycle",
                                                "a photo of a clock"]
    text = "".join(json.dumps(r) + "\n" for r in suite)
    assert (DATA / "geneval_natural_test.jsonl").read_text() == text
    assert hashlib.sha256(text.encode()).hexdigest() == TEST_SHA256
    assert COCO80[64:67] == ("computer mouse", "tv remote", "computer keyboard") and len(set(COCO80)) == 80
    assert not any("person" in r["prompt"] for r in suite if r["tag"] in ("colors", "color_attr")
                   and any(c["class"] == "person" for c in r["include"]))


def test_training_prompts_are_disjoint_from_the_test_prompts():
    test = {r["prompt"] for r in geneval_suite(43)}
    train = [json.loads(line) for line in (DATA / "geneval_natural_train.jsonl").read_text().splitlines()]
    assert train == geneval_train_suite(n=1000)
    assert len(train) == 3553 and not test & {r["prompt"] for r in train}
    assert "single_object" not in {r["tag"] for r in train}  # all 80 single objects are test prompts


def test_instance_post_processing_known_answer():
    """Two queries, three classes; masks of a 4×4 image given at 2×2 and upsampled (bilinear, then
    0.5), score = class probability × mean mask probability in the mask, box = mask extent."""
    big = 6.0
    class_logits = torch.tensor([[big, 0.0, 0.0, 0.0],     # query 0: class 0
                                 [0.0, 0.0, big, 0.0]])    # query 1: class 2
    mask_logits = torch.full((2, 4, 4), -big)
    mask_logits[0, :2, :2] = big     # top-left 2×2 block
    mask_logits[1, 1:4, 2:4] = big   # right 3×2 block
    dets = instance_detections(class_logits, mask_logits, (4, 4), (4, 4), ("a", "b", "c"), top_k=2)
    p = torch.softmax(class_logits[0], 0)[0].item()
    s = torch.sigmoid(torch.tensor(big)).item()
    (c0, sc0, box0, m0), (c1, sc1, box1, m1) = sorted(dets, key=lambda d: d[0])
    assert (c0, c1) == ("a", "c")
    assert box0 == (0.0, 0.0, 2.0, 2.0) and box1 == (2.0, 1.0, 4.0, 4.0)
    assert m0.sum() == 4 and m1.sum() == 6
    assert sc0 == pytest.approx(p * s, rel=1e-5) and sc1 == pytest.approx(p * s, rel=1e-5)


def test_color_crop_pastes_the_object_on_grey_and_crops_to_its_box():
    img = np.zeros((4, 5, 3), np.uint8)
    img[..., 0] = 200
    mask = np.zeros((4, 5), bool)
    mask[1, 1:3] = True
    crop = color_crop(img, mask, (1, 1, 4, 3))
    assert crop.shape == (2, 3, 3)
    assert crop[0, 0].tolist() == [200, 0, 0] and crop[0, 2].tolist() == [153, 153, 153]
    assert crop[1].tolist() == [[153, 153, 153]] * 3


def test_rules_on_coco_detections_exclude_clause_and_position_margin():
    counting = parse_metadata({"tag": "counting", "include": [{"class": "cat", "count": 2}],
                               "exclude": [{"class": "cat", "count": 3}], "prompt": "a photo of two cats"})
    two = [Detection("cat", 0.95, (0, 0, 10, 10)), Detection("cat", 0.95, (20, 0, 30, 10))]
    assert score_detections(two, counting).correct
    assert not score_detections([*two, Detection("cat", 0.95, (40, 0, 50, 10))], counting).correct  # exclude
    # counting uses the 0.9 threshold: a 0.8 third cat does not count
    assert score_detections([*two, Detection("cat", 0.8, (40, 0, 50, 10))], counting).correct
    pos = parse_metadata({"tag": "position", "include": [{"class": "tv remote", "count": 1},
                                                         {"class": "cat", "count": 1, "position": ["right of", 0]}],
                          "prompt": "a photo of a cat right of a tv remote"})
    remote = Detection("tv remote", 0.9, (0, 0, 10, 10))
    assert score_detections([remote, Detection("cat", 0.9, (12, 0, 22, 10))], pos).correct
    # centres 12 px apart: right of; centres 1 px apart with boxes 10 wide: within the 0.1·(10 + 10) = 2 px
    # margin, so no relation at all
    assert not score_detections([remote, Detection("cat", 0.9, (1, 0, 11, 10))], pos).correct


def _tiny_natural_geneval(root: Path) -> Path:
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS
    from safetensors.torch import save_file
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    cfg = Mask2FormerConfig(
        backbone_config=SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], image_size=64,
                                   out_features=["stage1", "stage2", "stage3", "stage4"]),
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_layers=1, decoder_layers=2, num_queries=8,
        dim_feedforward=32, encoder_feedforward_dim=32, num_attention_heads=2, num_labels=80)
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    with torch.no_grad():  # every query says "cat" (label 15) with probability ≈ 1
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[COCO80.index("cat")] = 20.0
    model.save_pretrained(root / "mask2former")
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}).save_pretrained(root / "mask2former")
    clip_cfg = {"embed_dim": 16,
                "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    _MODEL_CONFIGS["test-tiny-geneval-clip"] = clip_cfg
    clip = open_clip.create_model("test-tiny-geneval-clip")
    (root / "clip").mkdir()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, root / "clip" / "open_clip_model.safetensors")
    (root / "clip" / "open_clip_config.json").write_text(json.dumps({"model_cfg": clip_cfg}))
    return root


def test_reward_from_a_directory_detects_with_the_models_own_outputs(tmp_path):
    from PIL import Image

    from alignbench.registry import rewards

    src = _tiny_natural_geneval(tmp_path)
    reward = rewards.get("geneval-natural")(options={"source": str(src)})
    img = np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)
    dets = reward.detector(img)
    # by hand from the model's outputs
    proc = reward.detector.processor
    pix = proc(images=[Image.fromarray(img)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = reward.detector.model(pixel_values=pix)
    ref = instance_detections(out.class_queries_logits[0], out.masks_queries_logits[0], tuple(pix.shape[-2:]),
                              (96, 80), COCO80)
    kept = [d for d in ref if d[1] > 0.3][:16]
    assert kept, "the tiny detector should find cats"
    assert [(d.cls, round(d.score, 6), d.box) for d in dets] == [(c, round(s, 6), b) for c, s, b, _ in kept]
    assert all(d.color in ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
               for d in dets)
    # the same colour as CLIP zero-shot by hand for the first object
    import open_clip

    clip, tok = reward.detector.clip, open_clip.get_tokenizer("local-dir:" + str(src / "clip"))
    crop = reward.detector.clip_preprocess(Image.fromarray(color_crop(img, kept[0][3], kept[0][2])))[None]
    with torch.no_grad():
        f = clip.encode_image(crop)
        f = f / f.norm(dim=-1, keepdim=True)
        logits = []
        for c in ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"):
            t = clip.encode_text(tok([f"a photo of a {c} cat", f"a photo of a {c}-colored cat", f"a photo of a {c} object"]))
            t = (t / t.norm(dim=-1, keepdim=True)).mean(0)
            logits.append(float(f[0] @ (t / t.norm())))
    assert dets[0].color == ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
                             "white")[int(np.argmax(logits))]
    meta = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    scores = reward.score([img], ["a photo of a cat"], [meta])
    assert scores["accuracy"].tolist() == [1.0]
    dog = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    assert reward.score([img], ["a photo of a dog"], [dog])["accuracy"].tolist() == [0.0]
