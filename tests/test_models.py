"""The embedded backbone: tokenizers, the tiny FluxPipeline, the adapter, model specs, pretraining."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignbench.models.backbone import FluxBackbone
from alignbench.models.pretrain import PretrainConfig, Pretrainer
from alignbench.models.spec import ModelSpec, get_model
from alignbench.models.tiny import TinyFluxConfig, build_tiny_pipeline
from alignbench.models.tokenizer import build_tokenizers, world_vocabulary

MICRO = TinyFluxConfig(vae_channels=(8, 8, 8), text_dim=16, text_heads=2, num_layers=1, num_single_layers=1,
                       attention_head_dim=8, num_attention_heads=2, axes_dims_rope=(2, 2, 4))


@pytest.fixture(scope="module")
def micro_backbone():
    return FluxBackbone(build_tiny_pipeline(MICRO, seed=0), 64, 64, max_sequence_length=20, guidance_scale=1.0)


def test_tokenizers_split_sign_text_into_characters_and_know_every_world_word():
    clip, t5 = build_tokenizers(20)
    ids = clip('a sign that says "KMPT"').input_ids
    assert clip.convert_ids_to_tokens(ids) == ["<bos>", "a", "sign", "that", "says", '"', "K", "M", "P", "T", '"',
                                               "<eos>"]
    assert t5.convert_ids_to_tokens(t5("a photo of three crosses").input_ids) == [
        "a", "photo", "of", "three", "crosses", "<eos>"]
    from alignbench.world.prompts import geneval_splits, ocr_splits
    unk = clip.convert_tokens_to_ids("<unk>")
    for rec in [*geneval_splits()[0], *ocr_splits()[0]]:
        assert unk not in clip(rec["prompt"]).input_ids, rec["prompt"]
    assert len(world_vocabulary()) == len(set(world_vocabulary()))


def test_clip_pooled_output_is_read_at_eos(micro_backbone):
    pipe = micro_backbone.pipe
    ids = pipe.tokenizer(["a photo of a ring"], padding="max_length", max_length=20, return_tensors="pt").input_ids
    out = pipe.text_encoder(ids)
    eos_pos = (ids[0] == pipe.tokenizer.eos_token_id).nonzero()[0, 0]
    assert torch.equal(out.pooler_output[0], out.last_hidden_state[0, eos_pos])


def test_sigma_grid_uses_the_scheduler_shift_rule(micro_backbone):
    sig = micro_backbone.sigmas(10)
    assert sig.shape == (11,) and sig[0] == 1.0 and sig[-1] == 0.0 and bool((sig[1:] < sig[:-1]).all())
    # FLUX time shift: sigma' = e^mu / (e^mu + 1/sigma - 1), mu = calculate_shift(64 tokens)
    m = (1.15 - 0.5) / (4096 - 256)
    mu = 64 * m + 0.5 - m * 256
    s = 1 - 3 / 10  # 4th grid point of linspace(1, 0.1, 10)
    assert sig[3].item() == pytest.approx(math.exp(mu) / (math.exp(mu) + 1 / s - 1), rel=1e-5)
    with pytest.raises(ValueError, match="num_steps"):
        micro_backbone.sigmas(0)


def test_initial_noise_depends_only_on_each_seed(micro_backbone):
    a = micro_backbone.initial_noise([1, 2, 3])
    b = micro_backbone.initial_noise([3, 2])
    assert a.shape == (3, 64, 16)
    assert torch.equal(a[2], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], a[1])


def test_velocity_shapes_nfe_count_prompt_cache_and_decode_range(micro_backbone):
    bb = micro_backbone
    emb = bb.encode_prompts(["a photo of a ring", "a photo of a cross", "a photo of a ring"])
    assert emb.prompt_embeds.shape == (3, 20, 16) and emb.pooled.shape == (3, 16)
    assert torch.equal(emb.prompt_embeds[0], emb.prompt_embeds[2])
    before = bb.nfe
    v = bb.velocity(bb.initial_noise([0, 1, 2]), 0.5, emb)
    assert v.shape == (3, 64, 16) and bb.nfe - before == 3
    img = bb.decode(bb.sample_ode(emb, [0, 1, 2], 2))
    assert img.shape == (3, 3, 64, 64) and img.min() >= 0 and img.max() <= 1


def test_ode_sampling_is_euler_on_the_grid(micro_backbone):
    bb = micro_backbone
    emb = bb.encode_prompts(["a photo of a square"])
    sig = bb.sigmas(3)
    x = bb.initial_noise([5])
    for i in range(3):
        x = x + float(sig[i + 1] - sig[i]) * bb.velocity(x, float(sig[i]), emb)
    assert torch.allclose(bb.sample_ode(emb, [5], 3), x, atol=1e-6)


def test_classifier_free_guidance_matches_fluxpipeline_true_cfg_and_counts_two_rows_per_sample():
    pipe = build_tiny_pipeline(MICRO, seed=3)
    bb = FluxBackbone(pipe, 64, 64, max_sequence_length=20, guidance_scale=1.0, true_cfg_scale=3.0)
    plain = FluxBackbone(pipe, 64, 64, max_sequence_length=20, guidance_scale=1.0)
    prompt = "a photo of a blue cross"
    emb, neg = bb.encode_prompts([prompt, prompt]), bb.encode_prompts(["", ""])
    x = bb.initial_noise([4, 5])
    before = bb.nfe
    v = bb.velocity(x, 0.7, emb)
    assert bb.nfe - before == 4
    v_c, v_u = plain.velocity(x, 0.7, emb), plain.velocity(x, 0.7, neg)
    torch.testing.assert_close(v, v_u + 3.0 * (v_c - v_u), rtol=1e-5, atol=1e-6)
    # whole sampler: the pipeline's own true-CFG loop on the same initial latents and σ grid
    ours = bb.sample_ode(bb.encode_prompts([prompt]), [9], 4)
    ref = pipe(prompt, negative_prompt="", true_cfg_scale=3.0, guidance_scale=1.0, height=64, width=64,
               num_inference_steps=4, max_sequence_length=20, latents=bb.initial_noise([9]),
               output_type="latent").images
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="true_cfg_scale"):
        FluxBackbone(pipe, 64, 64, true_cfg_scale=0.5)


def test_lora_starts_as_identity_trains_and_reference_mode_disables_it():
    bb = FluxBackbone(build_tiny_pipeline(MICRO, seed=1), 64, 64, max_sequence_length=20)
    emb = bb.encode_prompts(["a photo of a red ring"])
    x = bb.initial_noise([0])
    with torch.no_grad():
        v0 = bb.velocity(x, 0.7, emb)
    params = bb.add_lora(rank=4, alpha=8, seed=0)
    assert params and all(p.requires_grad for p in params)
    assert all(not p.requires_grad for n, p in bb.transformer.named_parameters() if "lora_" not in n)
    targets = {n.rsplit(".lora_", 1)[0].split(".", 2)[-1] for n, _ in bb.transformer.named_parameters() if "lora_A" in n}
    assert {"attn.to_q", "attn.add_k_proj", "proj_mlp", "ff_context.net.2"} <= targets
    with torch.no_grad():
        assert torch.allclose(bb.velocity(x, 0.7, emb), v0, atol=1e-6)  # B = 0 at init
    loss = bb.velocity(x, 0.7, emb).pow(2).mean()
    loss.backward()
    torch.optim.SGD(params, lr=1.0).step()
    with torch.no_grad():
        v1 = bb.velocity(x, 0.7, emb)
        with bb.reference():
            v_ref = bb.velocity(x, 0.7, emb)
        assert not torch.allclose(v1, v0, atol=1e-4)
        assert torch.allclose(v_ref, v0, atol=1e-6)
        assert torch.allclose(bb.velocity(x, 0.7, emb), v1)  # adapter back on after the block


def test_shipped_pipeline_loads_with_diffusers_and_draws_64px():
    from diffusers import FluxPipeline

    path = get_model("tiny-shapes").resolved_source()
    pipe = FluxPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a red circle", height=64, width=64, num_inference_steps=4, max_sequence_length=20,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)


def test_flux_dev_spec_loads_a_local_directory_and_names_the_repo_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    from alignbench.errors import UserError

    build_tiny_pipeline(MICRO, seed=0).save_pretrained(tmp_path / "flux")
    spec = get_model("flux-dev", source=str(tmp_path / "flux"), height=64, width=64, dtype="float32",
                     max_sequence_length=20)
    bb = spec.load()
    assert bb.domain == "natural" and bb.transformer.config.num_layers == 1
    assert bb.transformer.config.guidance_embeds is False and bb.latent_shape == (64, 16)
    assert get_model("flux-dev", source=str(tmp_path / "flux"), revision="label", height=64, width=64,
                     dtype="float32", max_sequence_length=20).load().latent_shape == (64, 16)  # a label locally
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="black-forest-labs/FLUX.1-dev.*Hugging Face Hub"):
        get_model("flux-dev").load()
    # a Hub repo id gets the revision pinned
    import diffusers

    seen = {}

    def fake_from_pretrained(src, **kw):
        seen.update(src=src, **kw)
        raise OSError("offline")

    monkeypatch.setattr(diffusers.FluxPipeline, "from_pretrained", fake_from_pretrained)
    with pytest.raises(UserError, match="black-forest-labs/FLUX.1-dev"):
        get_model("flux-dev", revision="abc123").load()
    assert seen["src"] == "black-forest-labs/FLUX.1-dev" and seen["revision"] == "abc123"


def test_model_spec_rejects_bad_fields_with_the_field_name():
    from alignbench.errors import ConfigError

    with pytest.raises(ConfigError, match="model.dtype"):
        get_model("tiny-shapes", dtype="float8")
    assert isinstance(get_model("tiny-shapes"), ModelSpec)


TINY_PRETRAIN = dict(model=MICRO.model_dump(), vae_steps=4, vae_batch=4, steps=4, batch=4, pool_size=16,
                     warmup=2, checkpoint_every=2)


class _Kill(Exception):
    pass


def _weights(pipe) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.clone() for n in ("vae", "text_encoder", "text_encoder_2", "transformer")
            for k, v in getattr(pipe, n).state_dict().items()}


@pytest.mark.parametrize("kill_at,ema", [(("vae", 3), 0.0), (("flow", 3), 0.0), (("flow", 3), 0.9)])
def test_pretraining_killed_and_resumed_matches_an_uninterrupted_run(tmp_path, kill_at, ema):
    cfg = PretrainConfig(**TINY_PRETRAIN, ema_decay=ema)
    full = Pretrainer(cfg, tmp_path / "full")
    full.run()

    def killer(phase, step, total, row):
        if (phase, step) == kill_at:
            raise _Kill

    with pytest.raises(_Kill):
        Pretrainer(cfg, tmp_path / "resumed", progress=killer).run()
    resumed = Pretrainer(cfg, tmp_path / "resumed")
    resumed.run()
    a, b = _weights(full.pipe), _weights(resumed.pipe)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.pipe.vae.config.shift_factor == resumed.pipe.vae.config.shift_factor
    # and training changed the weights
    init = _weights(build_tiny_pipeline(MICRO, seed=0))
    assert not torch.equal(init["transformer.proj_out.weight"], a["transformer.proj_out.weight"])
    assert not torch.equal(init["vae.encoder.conv_in.weight"], a["vae.encoder.conv_in.weight"])
    assert not torch.equal(init["text_encoder_2.shared.weight"], a["text_encoder_2.shared.weight"])
    assert (tmp_path / "full" / "pipeline" / "model_index.json").exists()


def test_pretraining_stopped_by_its_time_budget_resumes_to_the_same_weights(tmp_path):
    cfg = PretrainConfig(**TINY_PRETRAIN, ema_decay=0.9)
    full = Pretrainer(cfg, tmp_path / "full")
    full.run()
    first = Pretrainer(cfg, tmp_path / "budget", max_seconds=0).run()  # stops after its first step
    assert first["stopped"] and (first["phase"], first["step"]) == ("vae", 1)
    assert not (tmp_path / "budget" / "pipeline").exists()
    resumed = Pretrainer(cfg, tmp_path / "budget")
    assert resumed.run().get("stopped") is None
    a, b = _weights(full.pipe), _weights(resumed.pipe)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretraining_asked_to_stop_checkpoints_and_resumes_to_the_same_weights(tmp_path):
    cfg = PretrainConfig(**TINY_PRETRAIN, ema_decay=0.9)
    full = Pretrainer(cfg, tmp_path / "full")
    full.run()
    holder = {}

    def progress(phase, step, total, row):
        if phase == "flow" and step == 3:  # what the CLI's SIGINT / SIGTERM handler does
            holder["trainer"].request_stop()

    cut = Pretrainer(cfg, tmp_path / "cut", progress=progress)
    holder["trainer"] = cut
    first = cut.run()
    assert first["stopped"] and (first["phase"], first["step"]) == ("flow", 3)
    resumed = Pretrainer(cfg, tmp_path / "cut")
    assert resumed.run().get("stopped") is None
    a, b = _weights(full.pipe), _weights(resumed.pipe)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pretrain_command_stops_cleanly_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import yaml

    cfg = tmp_path / "micro.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_PRETRAIN, "steps": 100000, "model": {**MICRO.model_dump(mode="json")}}))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "alignbench.cli", "pretrain", "--out", str(out), "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "log.jsonl").exists():  # first row: end of the VAE phase
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "stopped on a signal at flow step" in stdout and "Traceback" not in stderr
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["phase"] == 1 and state["step"] >= 1 and not (out / "pipeline").exists()
    assert f"at flow step {state['step']} with a checkpoint" in stdout  # the step it reports is the one saved


def test_pretraining_weight_ema_follows_the_warmed_up_recursion_and_is_what_gets_saved(tmp_path):
    cfg = PretrainConfig(**{**TINY_PRETRAIN, "vae_steps": 0, "ema_decay": 0.15})
    raw: list[torch.Tensor] = []
    start = {}

    def record(phase, step, total, row):
        if phase == "flow":
            raw.append(trainer.pipe.transformer.proj_out.weight.detach().clone())

    trainer = Pretrainer(cfg, tmp_path, progress=record)
    start["w"] = trainer.pipe.transformer.proj_out.weight.detach().clone()
    trainer.run()
    assert len(raw) == cfg.steps
    ema = start["w"]
    for k, w in enumerate(raw):  # d_k = min(0.15, (1 + k)/(10 + k)): 0.1, 0.15, 0.15, 0.15
        d = min(0.15, (1 + k) / (10 + k))
        ema = d * ema + (1 - d) * w
    saved = trainer.pipe.transformer.proj_out.weight.detach()
    assert not torch.equal(saved, raw[-1])  # the pipeline holds the average, not the last weights
    torch.testing.assert_close(saved, ema, rtol=1e-6, atol=1e-7)
    exported = Pretrainer(cfg, tmp_path).export(tmp_path / "exp")
    assert exported["ema"] is True
    from diffusers import FluxTransformer2DModel

    loaded = FluxTransformer2DModel.from_pretrained(tmp_path / "exp" / "transformer")
    torch.testing.assert_close(loaded.proj_out.weight, ema, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("p_drop", [0.0, 0.5])
def test_caption_dropout_trains_on_the_empty_prompt_at_the_configured_rate(tmp_path, p_drop):
    cfg = PretrainConfig(**{**TINY_PRETRAIN, "vae_steps": 0, "steps": 25, "batch": 16, "checkpoint_every": 100,
                            "caption_dropout": p_drop})
    trainer = Pretrainer(cfg, tmp_path)
    seen: list[str] = []
    encode = trainer.pipe.encode_prompt

    def spy(prompt, *a, **kw):
        seen.extend(prompt)
        return encode(prompt, *a, **kw)

    trainer.pipe.encode_prompt = spy
    trainer.run()
    assert len(seen) == 25 * 16
    empty = sum(c == "" for c in seen) / len(seen)
    if p_drop == 0:
        assert empty == 0
    else:  # 400 Bernoulli(0.5) draws: 5 standard deviations is ±0.125
        assert abs(empty - p_drop) < 0.125
        assert set(seen) - {""} <= set(trainer.prompts)


def test_pretraining_refuses_to_resume_a_different_config(tmp_path):
    from alignbench.errors import UserError

    Pretrainer(PretrainConfig(**{**TINY_PRETRAIN, "steps": 0, "vae_steps": 2}), tmp_path).run()
    with pytest.raises(UserError, match="different pretraining config"):
        Pretrainer(PretrainConfig(**{**TINY_PRETRAIN, "steps": 0, "vae_steps": 3}), tmp_path).run()


def test_pretrain_command_runs_a_tiny_budget_and_rejects_bad_fields(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from alignbench.cli import app

    cfg = tmp_path / "micro.yaml"
    cfg.write_text(yaml.safe_dump({**TINY_PRETRAIN, "model": {**MICRO.model_dump(mode="json")}}))
    r = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "run"), "--config", str(cfg), "--steps", "2"])
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "run" / "pretrain.json").read_text())
    assert summary["config"]["steps"] == 2 and summary["throughput_images_per_s"]["flow"] > 0
    assert (tmp_path / "run" / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    bad = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "bad"), "--set", "batch=0"])
    assert bad.exit_code == 2 and "batch" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "bad").exists()


def test_a_second_stage_starts_from_a_saved_pipeline_and_keeps_its_vae(tmp_path):
    first = Pretrainer(PretrainConfig(**TINY_PRETRAIN), tmp_path / "stage1")
    first.run()
    cfg2 = PretrainConfig(**{**TINY_PRETRAIN, "vae_steps": 0, "steps": 2, "seed": 5,
                             "init_from": str(tmp_path / "stage1" / "pipeline")})
    second = Pretrainer(cfg2, tmp_path / "stage2")
    a = _weights(first.pipe)
    assert all(torch.equal(a[k], v) for k, v in _weights(second.pipe).items())  # starts from stage 1
    second.run()
    b = _weights(second.pipe)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("vae."))  # VAE untouched
    assert not torch.equal(a["transformer.proj_out.weight"], b["transformer.proj_out.weight"])
    assert second.pipe.vae.config.scaling_factor == first.pipe.vae.config.scaling_factor
    from alignbench.errors import UserError

    with pytest.raises(UserError, match="init_from: cannot start from"):
        Pretrainer(PretrainConfig(**{**TINY_PRETRAIN, "init_from": str(tmp_path / "missing")}), tmp_path / "x")


def test_guidance_embedding_is_fed_when_the_transformer_has_one():
    cfg = MICRO.model_copy(update={"guidance_embeds": True})
    pipe = build_tiny_pipeline(cfg, seed=0)
    low = FluxBackbone(pipe, 64, 64, max_sequence_length=20, guidance_scale=1.0)
    emb = low.encode_prompts(["a photo of a ring"])
    x = low.initial_noise([0])
    with torch.no_grad():
        v1 = low.velocity(x, 0.5, emb)
        low.guidance_scale = 3.5
        v35 = low.velocity(x, 0.5, emb)
        direct = pipe.transformer(hidden_states=x, timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                                  pooled_projections=emb.pooled, encoder_hidden_states=emb.prompt_embeds,
                                  txt_ids=emb.text_ids, img_ids=low._img_ids, return_dict=False)[0]
    assert not torch.allclose(v1, v35) and torch.allclose(v35, direct)


@pytest.mark.parametrize("override,field", [
    ("model.attention_head_dim=12", "axes_dims_rope"),
    ("model.text_heads=3", "text_heads"),
    ("model.vae_channels=[12,32,32]", "vae_norm_groups"),
])
def test_inconsistent_model_sizes_are_one_line_errors(tmp_path, override, field):
    from typer.testing import CliRunner

    from alignbench.cli import app

    r = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "p"), "--set", override])
    assert r.exit_code == 2 and field in r.output and "Traceback" not in r.output
    assert not (tmp_path / "p").exists()
