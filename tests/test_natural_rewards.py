"""The natural-image rewards load tiny random models of the published architectures from a local
directory through their real loading path, and score what a hand computation from the models' own
parts gives (issue 18, item 1). No network: every model is built in-process and saved to tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("open_clip")

from alignbench.errors import ConfigError, UserError  # noqa: E402
from alignbench.registry import rewards  # noqa: E402
from alignbench.rewards.pretrained import (  # noqa: E402
    IMAGEREWARD_MEAN,
    IMAGEREWARD_STD,
    OPENAI_MEAN,
    OPENAI_STD,
    RewardOptions,
    aesthetic_mlp,
    clip_tokenizer_offline,
    save_tiny_clip_reward,
)

PROMPTS = ["a photo of a red cat", "two dogs on a green sofa", "a sign that says \"hello\""]


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in PROMPTS]


@pytest.fixture(scope="module")
def clip_tokenizer():
    return clip_tokenizer_offline()


def test_offline_clip_tokenizer_matches_open_clip(clip_tokenizer):
    import open_clip

    ids = clip_tokenizer(["a photo of a cat"])["input_ids"][0]
    ref = open_clip.get_tokenizer("ViT-H-14")(["a photo of a cat"])[0]
    assert len(clip_tokenizer) == 49408
    assert ids == ref[: len(ids)].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]


def _tiny_clip(tmp_path, clip_tokenizer=None, name="clip"):
    out = tmp_path / name
    return out, save_tiny_clip_reward(out), None


def _clip_cos(model, src, images, prompts):
    """cos(image, text) from the model's parts: towers' pooled outputs times the projections (the
    processor with transformers' PIL backend, which reproduces transformers 4's preprocessing)."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(src, backend="pil")
    pil = [Image.fromarray(a) for a in images]
    pix = proc(images=pil, return_tensors="pt")["pixel_values"]
    txt = proc(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        img = model.vision_model(pixel_values=pix).pooler_output @ model.visual_projection.weight.T
        t = model.text_model(input_ids=txt["input_ids"], attention_mask=txt["attention_mask"]).pooler_output
        t = t @ model.text_projection.weight.T
    img, t = img / img.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
    return (img * t).sum(-1), img


def test_pickscore_from_a_local_directory_equals_the_hand_computation(tmp_path, clip_tokenizer, images):
    src, model, proc = _tiny_clip(tmp_path, clip_tokenizer)
    cos, _ = _clip_cos(model, src, images, PROMPTS)
    factory = rewards.get("pickscore")
    got = factory(options={"source": str(src), "batch_size": 2}).score(images, PROMPTS, [{}] * 3)
    assert set(got) == {"pickscore"}
    torch.testing.assert_close(got["pickscore"], 50.0 * cos / 26, rtol=1e-4, atol=1e-5)
    raw = factory(options={"source": str(src), "formula": "raw"}).score(images, PROMPTS)["pickscore"]
    torch.testing.assert_close(raw, 50.0 * cos, rtol=1e-4, atol=1e-4)
    # TMPO's variant clamps the logit scale at 10: equal here (ln 50 < 10), smaller for a scale of 12
    tmpo = factory(options={"source": str(src), "formula": "tmpo"})
    torch.testing.assert_close(tmpo.score(images, PROMPTS)["pickscore"], got["pickscore"])
    with torch.no_grad():
        tmpo.model.logit_scale.fill_(12.0)
    torch.testing.assert_close(tmpo.score(images, PROMPTS)["pickscore"], np.exp(10.0) * cos / 26, rtol=1e-4, atol=1e-3)


def test_clipscore_and_aesthetic(tmp_path, clip_tokenizer, images):
    src, model, proc = _tiny_clip(tmp_path, clip_tokenizer)
    cos, img = _clip_cos(model, src, images, PROMPTS)
    got = rewards.get("clipscore")(options={"source": str(src)}).score(images, PROMPTS)["clipscore"]
    torch.testing.assert_close(got, 50.0 * cos / 30, rtol=1e-4, atol=1e-5)
    torch.manual_seed(1)
    head = aesthetic_mlp(16).eval()
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, src / "aesthetic-model.pth")
    got = rewards.get("aesthetic")(options={"source": str(src)}).score(images, PROMPTS)["aesthetic"]
    with torch.no_grad():
        w = [head[i] for i in (0, 2, 4, 6, 7)]
        x = img
        for lin in w:  # no activations between the layers (the LAION head is linear)
            x = x @ lin.weight.T + lin.bias
    torch.testing.assert_close(got, x.squeeze(-1), rtol=1e-4, atol=1e-5)


HPS_CFG = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def _tiny_hps(tmp_path):
    import open_clip
    from open_clip.factory import _MODEL_CONFIGS

    _MODEL_CONFIGS["test-tiny-hps"] = HPS_CFG
    torch.manual_seed(0)
    model = open_clip.create_model("test-tiny-hps", pretrained=None).eval()
    src = tmp_path / "hps"
    src.mkdir()
    torch.save({"state_dict": model.state_dict()}, src / "HPS_v2.1_compressed.pt")
    (src / "open_clip_config.json").write_text(json.dumps({"model_cfg": HPS_CFG}))
    return src, model


def test_hpsv2_pads_to_square_and_scores_the_raw_cosine(tmp_path):
    import open_clip

    src, model = _tiny_hps(tmp_path)
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (48, 24, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    prompts = PROMPTS[:2]
    got = rewards.get("hpsv2")(options={"source": str(src)}).score(imgs, prompts)["hpsv2"]
    # by hand: 48×24 → 32×16 (longest side 32, bicubic with antialias), zero-padded by 8 columns each
    # side, then normalised (so the padding is (0 − mean)/std)
    x0 = torch.from_numpy(imgs[0]).permute(2, 0, 1).float()[None] / 255
    x0 = torch.nn.functional.interpolate(x0, size=(32, 16), mode="bicubic", antialias=True, align_corners=False)
    x0 = torch.nn.functional.pad(x0, (8, 8, 0, 0))
    x1 = torch.from_numpy(imgs[1]).permute(2, 0, 1).float()[None] / 255
    x = torch.cat([x0, x1])
    x = (x - torch.tensor(OPENAI_MEAN)[:, None, None]) / torch.tensor(OPENAI_STD)[:, None, None]
    with torch.no_grad():
        f = model.visual(x)
        t = model.encode_text(open_clip.get_tokenizer("test-tiny-hps")(prompts))
    f, t = f / f.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(got, (f * t).sum(-1), rtol=1e-4, atol=1e-4)


def test_hpsv2_rejects_a_checkpoint_of_another_architecture(tmp_path):
    src, model = _tiny_hps(tmp_path)
    state = model.state_dict()
    state.pop("logit_scale")
    torch.save({"state_dict": state}, src / "HPS_v2.1_compressed.pt")
    with pytest.raises(UserError, match=r"reward 'hpsv2': cannot load the weights in .*logit_scale"):
        rewards.get("hpsv2")(options={"source": str(src)})


def _tiny_imagereward(tmp_path):
    """A tiny ImageReward checkpoint in BLIP's own key names (the inverse of the loader's mapping,
    written out here so that a mapping error on either side shows), with its med_config.json and
    a BERT tokenizer."""
    from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "red", "cat", "two", "dogs", "on",
             "green", "sofa", "sign", "that", "says", "hello", '"']
    src = tmp_path / "imagereward"
    src.mkdir()
    (src / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(src / "vocab.txt")).save_pretrained(src)
    med = {"vocab_size": len(words) + 2, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 24, "max_position_embeddings": 64, "encoder_width": 24, "hidden_act": "gelu",
           "layer_norm_eps": 1e-12, "add_cross_attention": True, "pad_token_id": 0}
    (src / "med_config.json").write_text(json.dumps(med))
    vcfg = {"hidden_size": 24, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8}
    (src / "vision_config.json").write_text(json.dumps(vcfg))
    torch.manual_seed(0)
    vision = BlipVisionModel(BlipVisionConfig(**vcfg, layer_norm_eps=1e-6)).eval()
    text = BlipTextModel(BlipTextConfig(vocab_size=med["vocab_size"], hidden_size=16, encoder_hidden_size=24,
                                        intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                                        max_position_embeddings=64, is_decoder=True), add_pooling_layer=False).eval()
    with torch.no_grad():  # random weights of unit scale (at init the image barely reaches the [CLS] state)
        for name, p in [*vision.named_parameters(), *text.named_parameters()]:
            norm_weight = "norm" in name.lower() and name.endswith("weight")
            p.normal_(1.0 if norm_weight else 0.0, 0.1 if norm_weight else 0.3)
    head = aesthetic_mlp(16).eval()  # the head has dropout layers
    state = {}
    inv = {"embeddings.class_embedding": "cls_token", "embeddings.position_embedding": "pos_embed",
           "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
           "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
           "post_layernorm.weight": "norm.weight", "post_layernorm.bias": "norm.bias"}
    parts = {"layer_norm1": "norm1", "self_attn.qkv": "attn.qkv", "self_attn.projection": "attn.proj",
             "layer_norm2": "norm2", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for k, v in vision.state_dict().items():
        if k in inv:
            state["blip.visual_encoder." + inv[k]] = v
        else:
            _, _, i, rest = k.split(".", 3)
            part, _, leaf = rest.rpartition(".")
            state[f"blip.visual_encoder.blocks.{i}.{parts[part]}.{leaf}"] = v
    for k, v in text.state_dict().items():
        state["blip.text_encoder." + k] = v
    for k, v in head.state_dict().items():
        state["mlp.layers." + k] = v
    torch.save(state, src / "ImageReward.pt")
    return src, vision, text, head


def test_imagereward_from_blip_names_equals_the_hand_computation(tmp_path, images):
    import torchvision.transforms as T
    from transformers import BertTokenizer

    src, vision, text, head = _tiny_imagereward(tmp_path)
    got = rewards.get("imagereward")(options={"source": str(src)}).score(images, PROMPTS)["imagereward"]
    tf = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                    T.Normalize(OPENAI_MEAN, OPENAI_STD)])
    pix = torch.stack([tf(Image.fromarray(a)) for a in images])
    tok = BertTokenizer.from_pretrained(src)
    ids = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    assert ids["input_ids"][0, 0].item() == 2  # [CLS] leads, as in ImageReward's score()
    with torch.no_grad():
        img = vision(pixel_values=pix).last_hidden_state
        cls = text(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], encoder_hidden_states=img,
                   encoder_attention_mask=torch.ones(img.shape[:-1], dtype=torch.long)).last_hidden_state[:, 0]
        r = head(cls).squeeze(-1)
    torch.testing.assert_close(got, (r - IMAGEREWARD_MEAN) / IMAGEREWARD_STD, rtol=1e-4, atol=1e-5)
    # the image changes the score through the cross-attention
    assert not torch.allclose(got[:1], rewards.get("imagereward")(options={"source": str(src)}).score(
        [255 - images[0]], PROMPTS[:1])["imagereward"])


def test_imagereward_refuses_a_checkpoint_with_missing_keys(tmp_path):
    src, *_ = _tiny_imagereward(tmp_path)
    state = torch.load(src / "ImageReward.pt", weights_only=True)
    state.pop("blip.visual_encoder.blocks.1.attn.qkv.weight")
    torch.save(state, src / "ImageReward.pt")
    with pytest.raises(UserError, match="vision tower: 1 missing keys"):
        rewards.get("imagereward")(options={"source": str(src)})


def test_options_are_checked_and_named(tmp_path):
    with pytest.raises(ConfigError, match=r"reward.formula: 'x' is not a formula of reward 'pickscore'; "
                                          r"allowed: flow_grpo, tmpo, raw"):
        rewards.get("pickscore")(options={"formula": "x"})
    with pytest.raises(UserError, match=r"reward.source: '\./nowhere' is not a directory"):
        rewards.get("pickscore")(options={"source": "./nowhere"})
    from alignbench.task import get_task

    with pytest.raises(ConfigError, match="reward.source: reward 'geneval-shapes' takes no options"):
        get_task("geneval").with_reward_options({"source": str(tmp_path)}).reward("shapes")
    with pytest.raises(ConfigError, match="reward.batch_size"):
        get_task("geneval").with_reward_options({"batch_size": 0})
    assert RewardOptions().batch_size == 16
    # a run config is checked before any weights load or any run directory exists
    from alignbench.training.trainer import resolve_run_config

    with pytest.raises(ConfigError, match="reward.formula: 'x' is not a formula of reward 'hpsv2'; allowed: cosine"):
        resolve_run_config("flow_grpo", "hpsv2", "flux-dev", 0, overrides=["reward.formula=x"])
    with pytest.raises(ConfigError, match="reward.formula: 'raw' is not a formula of reward 'hpsv2'"):
        resolve_run_config("flow_grpo", "preference", "flux-dev", 0, overrides=["reward.formula=raw"])
    cfg = resolve_run_config("flow_grpo", "pickscore", "flux-dev", 0, overrides=["reward.formula=raw"])
    assert cfg["reward"]["formula"] == "raw"


def test_hub_failure_is_one_line_naming_the_repository(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        rewards.get("hpsv2")(options={})
    msg = str(info.value)
    assert "'xswu/HPSv2' from the Hugging Face Hub" in msg and "\n" not in msg


def test_reward_options_that_change_scores_are_part_of_the_base_evaluation_cache_key():
    from alignbench.base_cache import cache_ingredients, cache_key
    from alignbench.task import get_task
    from alignbench.training.trainer import resolve_run_config

    task = get_task("geneval")

    def key(*sets):
        cfg = resolve_run_config("flow_grpo", "geneval", "flux-dev", 0, overrides=list(sets))
        return cache_key(cache_ingredients(cfg, task, "cuda"))

    base = key()
    assert key("reward.batch_size=4") == base and key("reward.device=cuda:1") == base
    assert len({base, key("reward.source=/models/m2f"), key("reward.revision=abc"),
                key("reward.dtype=bfloat16")}) == 4
