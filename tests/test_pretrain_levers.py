"""Pretraining levers of the embedded backbone (issue 17): the dev probe and its learning curves,
warm-up–stable–decay, adaLN-Zero, the caption mix, the renderer's label maps and the label-alignment
loss, resuming a wsd run with more steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignbench.errors import UserError
from alignbench.models.pretrain import (
    CAPTION_TAGS,
    CaptionSampler,
    PretrainConfig,
    Pretrainer,
    letter_loss,
    letter_targets,
    lr_at,
    pack_labels,
    zero_init_adaln,
)
from alignbench.models.pretrain.probe import ProbeConfig, probe_records, summarize_probe
from alignbench.models.tiny import TinyFluxConfig, build_tiny_pipeline
from alignbench.world.palette import CLASSES, COLORS
from alignbench.world.scene import (
    LABEL_CHANNELS,
    Background,
    ObjectSpec,
    Scene,
    SignSpec,
    WorldConfig,
    render,
    render_with_labels,
)

MICRO = TinyFluxConfig(vae_channels=(8, 8, 8), text_dim=16, text_heads=2, num_layers=1, num_single_layers=1,
                       attention_head_dim=8, num_attention_heads=2, axes_dims_rope=(2, 2, 4))
TINY = dict(model=MICRO.model_dump(), vae_steps=0, vae_batch=4, steps=4, batch=4, pool_size=16, warmup=2,
            checkpoint_every=2)


def test_wsd_schedule_is_constant_then_decays_linearly_to_zero():
    assert lr_at(0, 100, 1.0, 10, "wsd") == pytest.approx(0.1)
    assert lr_at(10, 100, 1.0, 10, "wsd") == 1.0
    assert lr_at(79, 100, 1.0, 10, "wsd") == 1.0  # decay starts at 100·(1 − 0.2) = 80
    assert lr_at(90, 100, 1.0, 10, "wsd") == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, 10, "wsd") == 0.0
    # the stable part does not depend on the run's length: curves of runs of different lengths compare
    assert [lr_at(k, 1000, 1.0, 10, "wsd") for k in range(70)] == [lr_at(k, 100, 1.0, 10, "wsd") for k in range(70)]
    with pytest.raises(ValueError, match="allowed: cosine, wsd"):
        lr_at(20, 100, 1.0, 10, "linear")


def test_adaln_zero_makes_every_block_the_identity_and_the_velocity_zero():
    pipe = build_tiny_pipeline(MICRO, seed=0)
    n = zero_init_adaln(pipe.transformer)
    assert n > 0
    tr = pipe.transformer
    x = torch.randn(2, 64, 16)
    ids = pipe._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32)
    pe, pooled, tid = pipe.encode_prompt(["a photo of a ring"] * 2, None, max_sequence_length=20)
    seen = {}
    tr.transformer_blocks[0].register_forward_hook(lambda m, a, o: seen.update(out=o[1]))
    tr.transformer_blocks[0].register_forward_pre_hook(lambda m, a, kw: seen.update(inp=kw["hidden_states"]),
                                                       with_kwargs=True)
    v = tr(hidden_states=x, timestep=torch.full((2,), 0.5), pooled_projections=pooled, encoder_hidden_states=pe,
           txt_ids=tid, img_ids=ids, return_dict=False)[0]
    assert torch.equal(v, torch.zeros_like(v))
    torch.testing.assert_close(seen["out"], seen["inp"])  # gates are zero: the block adds nothing
    # and it still learns: the gradient of the loss reaches the zeroed output projection
    (v - x).pow(2).mean().backward()
    assert tr.proj_out.weight.grad.abs().sum() > 0


def test_caption_mix_follows_the_tag_weights():
    uniform = CaptionSampler(0.0)
    assert uniform.tag_p is None  # equal weights keep the original draw (same stream as before)
    sampler = CaptionSampler(0.25, {"colors": 3.0, "counting": 0.0})
    rng = np.random.default_rng(0)
    draws = [sampler(rng) for _ in range(4000)]
    ocr = sum(fmt == "ocr" for fmt, _ in draws) / len(draws)
    tags = [rec["tag"] for fmt, rec in draws if fmt == "geneval"]
    assert abs(ocr - 0.25) < 0.03
    share = {t: tags.count(t) / len(tags) for t in CAPTION_TAGS}
    assert share["counting"] == 0.0
    assert abs(share["colors"] - 3 / 7) < 0.03 and abs(share["position"] - 1 / 7) < 0.03
    with pytest.raises(ValueError, match="allowed: single_object"):
        PretrainConfig(tag_weights={"sign": 1.0})


def test_label_maps_are_the_exact_coverage_of_each_object_and_sign():
    cfg = WorldConfig()
    scene = Scene(Background("flat", (128, 128, 128)),
                  [ObjectSpec("square", "red", 8.0, 8.0, 16.0), ObjectSpec("circle", "blue", 44.0, 44.0, 16.0)])
    img, lab = render_with_labels(scene, cfg, grid=16)
    assert np.array_equal(img, render(scene, cfg))  # the same image as the plain renderer
    assert lab.shape == (len(LABEL_CHANNELS), 16, 16)
    sq, red = CLASSES.index("square"), len(CLASSES) + COLORS.index("red")
    # the square covers pixels 0..15 exactly: cells 0..3 × 0..3 fully, nothing else
    assert np.allclose(lab[sq, :4, :4], 1.0) and lab[sq].sum() == pytest.approx(16.0)
    assert np.array_equal(lab[sq], lab[red])
    circ = CLASSES.index("circle")
    assert lab[circ].sum() == pytest.approx(np.pi * 8 ** 2 / 16, rel=0.03)  # area / 16 pixels per cell
    assert lab[-2:].sum() == 0
    sign = Scene(Background("flat", (0, 0, 0)), [], [SignSpec("AC", 32, 32, 30, 16, (240, 240, 240), (10, 10, 10), 14)])
    _, lab2 = render_with_labels(sign, cfg, grid=16)
    assert lab2[-2].sum() == pytest.approx(30 * 16 / 16, rel=0.05) and 0 < lab2[-1].sum() < lab2[-2].sum()
    assert lab2[:-2].sum() == 0


def test_letter_labels_split_the_sign_ink_into_each_letter_in_reading_order():
    from alignbench.world.prompts import OCR_ALPHABET
    from alignbench.world.scene import LETTER_CHANNELS, letter_layers, sign_layers

    cfg = WorldConfig()
    sign = SignSpec("WAEW", 32, 32, 56, 20, (240, 240, 240), (10, 10, 10), 16)
    layers = letter_layers(sign, 64, cfg.supersample)
    _, ink = sign_layers(sign, 64, cfg.supersample)
    assert layers.shape == (4, 64, 64)
    assert layers.sum() == pytest.approx(ink.sum(), rel=1e-9)  # the letters share out the string's ink
    assert np.abs(layers.sum(0) - ink).max() <= 0.3  # pixel by pixel, up to glyph overlaps
    xs = np.arange(64)
    centroids = [(layer.sum(0) * xs).sum() / layer.sum() for layer in layers]
    assert all(a + 4 < b for a, b in zip(centroids, centroids[1:], strict=False))  # left to right
    scene = Scene(Background("flat", (0, 0, 0)), [], [sign])
    img, lab = render_with_labels(scene, cfg, grid=16, letters=True)
    assert np.array_equal(img, render(scene, cfg))
    assert lab.shape == (len(LABEL_CHANNELS) + len(LETTER_CHANNELS), 16, 16)
    _, plain = render_with_labels(scene, cfg, grid=16)
    assert np.array_equal(lab[: len(LABEL_CHANNELS)], plain)  # the first channels are unchanged
    w = len(LABEL_CHANNELS) + OCR_ALPHABET.index("W")
    both_w = (layers[0] + layers[3]).reshape(16, 4, 16, 4).mean(axis=(1, 3))
    assert np.allclose(lab[w], np.clip(both_w, 0, 1), atol=1e-6)  # the two W's in one channel
    others = [i for i, ch in enumerate(OCR_ALPHABET) if ch not in "WAE"]
    assert lab[[len(LABEL_CHANNELS) + i for i in others]].sum() == 0


def test_label_alignment_with_letters_widens_the_head_and_trains(tmp_path):
    cfg = PretrainConfig(**{**TINY, "align_weight": 0.5, "align_block": 1, "align_letters": True, "steps": 2,
                            "ocr_fraction": 1.0})
    from alignbench.world.scene import LETTER_CHANNELS

    trainer = Pretrainer(cfg, tmp_path)
    trainer.run()
    n = len(LABEL_CHANNELS) + len(LETTER_CHANNELS)
    assert trainer.align_head.out_features == 4 * n and trainer.labels.shape == (16, n, 16, 16)
    assert trainer.labels[:, len(LABEL_CHANNELS):].float().sum() > 0  # every scene is a sign: letters present
    with pytest.raises(ValueError, match="align_letters needs align_weight > 0"):
        PretrainConfig(**{**TINY, "align_letters": True})


def test_letter_targets_name_the_letter_with_most_ink_in_each_token_and_skip_faint_tokens():
    maps = torch.zeros(1, 3, 4, 4)  # 3 letters, 4×4 cells = 2×2 tokens
    maps[0, 1, 0:2, 0:2] = 0.5      # token 0: letter 1 everywhere (mean ink 0.5)
    maps[0, 2, 0, 0] = 0.3          # … and a little of letter 2 (mean 0.075): letter 1 still wins
    maps[0, 0, 0:2, 2:4] = 0.04     # token 1: faint letter 0 (mean 0.04 < 0.08): left out
    maps[0, 2, 2, 0] = 0.4          # token 2: letter 2 in one cell (mean 0.1)
    target, mask = letter_targets(maps, 0.08)
    assert mask.tolist() == [[True, False, True, False]]
    assert target[0, 0].item() == 1 and target[0, 2].item() == 2
    logits = torch.zeros(1, 4, 3, requires_grad=True)
    with torch.no_grad():
        logits[0, 0, 1] = 2.0  # right on token 0, uniform (wrong argmax tie → index 0) on token 2
    loss, acc, n = letter_loss(logits, maps, 0.08)
    hand = (-torch.log_softmax(torch.tensor([0.0, 2.0, 0.0]), 0)[1] + np.log(3)) / 2
    assert n == 2 and acc == 0.5 and loss.item() == pytest.approx(hand.item(), rel=1e-6)
    loss.backward()
    assert logits.grad[0, 1].abs().sum() == 0 and logits.grad[0, 3].abs().sum() == 0  # uncounted tokens
    assert letter_loss(logits, torch.zeros(1, 3, 4, 4), 0.08) is None


def test_letter_loss_trains_its_own_head_and_needs_letter_labels(tmp_path):
    base = {**TINY, "align_weight": 0.5, "align_block": 1, "align_letters": True, "ocr_fraction": 1.0}
    rows = []
    trainer = Pretrainer(PretrainConfig(**{**base, "letter_weight": 1.0}), tmp_path / "on",
                         progress=lambda phase, step, total, row: rows.append(row))
    head0 = trainer.letter_head.weight.detach().clone()
    trainer.run()
    flow = [r for r in rows if r.get("phase") == "flow" and "loss" in r]
    assert len(flow) == 4 and all("letter_loss" in r and r["letter_tokens"] > 0 for r in flow)
    assert all(0 <= r["letter_acc"] <= 1 for r in flow)
    assert not torch.equal(trainer.letter_head.weight, head0)
    off = Pretrainer(PretrainConfig(**base), tmp_path / "off")
    off.run()
    assert off.letter_head is None
    on_w = trainer.pipe.transformer.state_dict()
    assert any(not torch.equal(v, off.pipe.transformer.state_dict()[k]) for k, v in on_w.items())
    resumed = Pretrainer(PretrainConfig(**{**base, "letter_weight": 1.0}), tmp_path / "on")
    assert resumed.load_checkpoint() and torch.equal(resumed.letter_head.weight, trainer.letter_head.weight)
    with pytest.raises(ValueError, match="letter_weight > 0 needs align_letters"):
        PretrainConfig(**{**TINY, "align_weight": 0.5, "letter_weight": 1.0})


def test_labels_are_packed_like_flux_packs_latents():
    pipe = build_tiny_pipeline(MICRO, seed=0)
    maps = torch.randn(3, 4, 16, 16)
    torch.testing.assert_close(pack_labels(maps), pipe._pack_latents(maps, 3, 4, 16, 16))


def test_label_alignment_trains_a_head_that_is_not_exported(tmp_path):
    cfg = PretrainConfig(**{**TINY, "align_weight": 0.5, "align_block": 1})
    rows = []
    trainer = Pretrainer(cfg, tmp_path, progress=lambda phase, step, total, row: rows.append(row))
    head0 = trainer.align_head.weight.detach().clone()
    trainer.run()
    flow = [r for r in rows if "align_loss" in r]
    assert len(flow) == cfg.steps and all(0 < r["align_loss"] < 2 for r in flow)
    assert not torch.equal(trainer.align_head.weight, head0)
    assert trainer.labels is not None and trainer.labels.shape == (16, len(LABEL_CHANNELS), 16, 16)
    saved = json.loads((tmp_path / "pipeline" / "transformer" / "config.json").read_text())
    assert saved["num_layers"] == 1  # the pipeline is the plain FluxTransformer2DModel: no head in it
    with pytest.raises(UserError, match="align_block: 5 is out of range; allowed: 0–1"):
        Pretrainer(PretrainConfig(**{**TINY, "align_weight": 0.5, "align_block": 5}), tmp_path / "bad")


def test_a_wsd_run_can_be_extended_while_stable_but_not_a_cosine_run(tmp_path):
    base = {**TINY, "schedule": "wsd", "decay_fraction": 0.5, "steps": 8}
    Pretrainer(PretrainConfig(**base), tmp_path / "w", max_seconds=0).run()  # stops after step 1
    longer = Pretrainer(PretrainConfig(**{**base, "steps": 20}), tmp_path / "w")
    assert longer.load_checkpoint() and longer.step == 1
    # a decay branch of chosen length: decay over steps 2..9 of 9 (fraction 8/9), still stable at step 1
    branch = Pretrainer(PretrainConfig(**{**base, "steps": 9, "decay_fraction": 8 / 9}), tmp_path / "w")
    assert branch.load_checkpoint() and branch.step == 1
    with pytest.raises(UserError, match="differs in decay_fraction, steps"):  # step 1 would be decaying
        Pretrainer(PretrainConfig(**{**base, "steps": 2, "decay_fraction": 0.9}), tmp_path / "w").load_checkpoint()
    Pretrainer(PretrainConfig(**{**TINY, "steps": 8}), tmp_path / "c", max_seconds=0).run()
    with pytest.raises(UserError, match="differs in steps"):
        Pretrainer(PretrainConfig(**{**TINY, "steps": 20}), tmp_path / "c").load_checkpoint()


def test_probe_uses_train_prompts_only_and_covers_every_class_in_each_colour():
    from alignbench.task import get_task

    items = probe_records(ProbeConfig(every=1, ocr_prompts=3))
    test_prompts = {r["prompt"] for t in ("geneval", "ocr") for r in get_task(t).prompts("test")}
    assert not {it.record["prompt"] for it in items} & test_prompts
    colors = [it.record for it in items if it.record.get("tag") == "colors"]
    test_colors = [r for r in get_task("geneval").prompts("test") if r["tag"] == "colors"]
    assert len(colors) + len(test_colors) == len(CLASSES) * len(COLORS)  # every pair not held out
    assert {r["include"][0]["class"] for r in colors} == set(CLASSES)
    n = sum(it.images for it in items if it.fmt == "geneval")
    assert n >= 150
    assert sum(it.fmt == "ocr" for it in items) == 3


def test_probe_summary_is_the_per_tag_mean_and_the_geneval_mean_over_tags():
    rows = [{"tag": "colors", "accuracy": 1.0, "partial": 1.0, "class_hit": 1.0, "color_hit": 1.0},
            {"tag": "colors", "accuracy": 0.0, "partial": 0.5, "class_hit": 1.0, "color_hit": 0.0},
            {"tag": "position", "accuracy": 0.0, "partial": 0.25},
            {"tag": "ocr", "ocr": 0.5, "exact": 0.0}]
    s = summarize_probe(rows)
    assert s["colors"] == {"accuracy": 0.5, "partial": 0.75, "class_hit": 1.0, "color_hit": 0.5, "n": 2}
    assert s["geneval"] == {"accuracy": 0.25, "partial": 0.5}  # mean over colors and position, not ocr
    assert s["ocr"]["ocr"] == 0.5


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_probe_runs_every_n_images_and_the_curves_plot(tmp_path, ema):
    from alignbench.models.pretrain.probe import plot_curves, read_curves

    probe = {"every": 8, "single_images": 1, "color_images": 1, "per_tag": 1, "other_images": 1, "steps": 2}
    cfg = PretrainConfig(**{**TINY, "ema_decay": ema, "probe": probe})
    Pretrainer(cfg, tmp_path / "a").run()
    rows = read_curves(tmp_path / "a")
    assert [r["images"] for r in rows] == [8, 16]  # batch 4: after steps 2 and 4
    assert rows[0]["ema"] == (ema > 0)
    s = rows[0]["summary"]
    assert set(s) >= {"single_object", "colors", "two_object", "counting", "position", "color_attr", "geneval"}
    assert s["colors"]["n"] == 48 and 0 <= s["geneval"]["accuracy"] <= 1
    assert (tmp_path / "a" / "probe" / "images-00000k.png").exists()
    # a continuation of weights trained elsewhere continues the curve
    Pretrainer(PretrainConfig(**{**TINY, "ema_decay": ema, "probe": probe, "steps": 2, "images_before": 16}),
               tmp_path / "b").run()
    assert [r["images"] for r in read_curves(tmp_path / "b")] == [24]
    tags = plot_curves([tmp_path / "a"], tmp_path / "curves.png",
                       references={"shipped": {"single_object": {"accuracy": 0.375}}})
    assert "single_object" in tags and (tmp_path / "curves.png").stat().st_size > 0
    with pytest.raises(UserError, match="no probe.jsonl rows"):
        plot_curves([tmp_path / "nothing"], tmp_path / "x.png")


@pytest.mark.parametrize("align", [0.0, 0.5])
def test_object_weighting_changes_training_alone_and_with_label_alignment(tmp_path, align):
    def weights(lam):
        t = Pretrainer(PretrainConfig(**{**TINY, "object_weight": lam, "align_weight": align, "align_block": 1, "steps": 2}),
                       tmp_path / f"w{lam}")
        t.run()
        assert lam == 0 or t.labels is not None  # the label maps are built for the weighting alone
        return t.pipe.transformer.proj_out.weight.detach()

    assert not torch.equal(weights(0.0), weights(4.0))


def test_object_weighted_loss_weights_cells_by_object_coverage():
    from alignbench.models.pretrain import object_weighted_loss

    maps = torch.zeros(1, len(LABEL_CHANNELS), 16, 16)
    maps[0, 0, :2, :2] = 1.0  # a circle covering the first token's 2×2 cells: 16 of 1,024 values
    err = torch.zeros(1, 64, 16)
    err[0, 0] = 1.0  # error only on the object
    # weights 5 on the object's 16 values, 1 on the other 1,008: mean(err·w) / mean(w) = 80 / 1088
    assert float(object_weighted_loss(err, maps, 4.0)) == pytest.approx(80 / 1088)
    assert float(object_weighted_loss(err, maps, 0.0)) == pytest.approx(16 / 1024)  # the plain MSE
    err2 = torch.zeros(1, 64, 16)
    err2[0, 5] = 1.0  # the same error on background
    assert float(object_weighted_loss(err2, maps, 4.0)) == pytest.approx(16 / 1088)


def test_model_guidance_adds_the_stopped_conditional_minus_unconditional_velocity_on_captioned_rows(tmp_path):
    cfg = PretrainConfig(**{**TINY, "caption_dropout": 0.5, "model_guidance": 0.5, "align_weight": 0.5,
                            "align_block": 1})
    t = Pretrainer(cfg, tmp_path)
    pipe = t.pipe
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 16, 16, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    img_ids = pipe._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32)
    captions = ["a photo of a red circle", ""]

    def velocity(prompts):
        embeds, pooled, text_ids = pipe.encode_prompt(prompts, None, device="cpu",
                                                      max_sequence_length=cfg.model.max_text_length)
        return pipe.transformer(hidden_states=pipe._pack_latents(x_t, 2, 4, 16, 16), timestep=sigma,
                                pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                img_ids=img_ids, return_dict=False)[0]

    pred = velocity(captions)
    hidden = t._hidden["h"]
    with torch.no_grad():
        expected = pred - velocity(["", ""])
    t._hidden["h"] = hidden
    term = t._guidance_term(pred, x_t, sigma, captions, img_ids, 4, 16, 16)
    assert not term.requires_grad
    torch.testing.assert_close(term[0], expected[0])
    assert float(expected[0].abs().max()) > 1e-4  # the caption changes the velocity: the check has teeth
    assert torch.equal(term[1], torch.zeros_like(term[1]))  # a dropped caption keeps the plain flow target
    assert t._hidden["h"] is hidden  # the label head still reads the captioned forward's activations
    # the term changes training from model_guidance_start on, and not before it
    def weights(name, **kw):
        r = Pretrainer(PretrainConfig(**{**TINY, "caption_dropout": 0.5, "steps": 2, **kw}), tmp_path / name)
        r.run()
        return r.pipe.transformer.proj_out.weight.detach()

    plain = weights("plain")
    assert not torch.equal(weights("mg", model_guidance=0.5), plain)
    assert torch.equal(weights("late", model_guidance=0.5, model_guidance_start=2), plain)
    with pytest.raises(ValueError, match="model_guidance > 0 needs caption_dropout > 0"):
        PretrainConfig(**{**TINY, "model_guidance": 0.5})
