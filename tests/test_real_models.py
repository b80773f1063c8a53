"""The real-model paths without the Hub (issue 18, items 4 and 5): SD3.5-Medium's adapter over a tiny
random ``StableDiffusion3Pipeline`` saved to disk, and `alignbench run` of every algorithm with the
sd3.5-medium and flux-dev model entries pointed at tiny local pipelines and a tiny local PickScore."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("open_clip")

from alignbench.cli import app  # noqa: E402
from alignbench.models.backbone import SD3Backbone, pack_latents, unpack_latents  # noqa: E402
from alignbench.models.spec import get_model  # noqa: E402
from alignbench.models.tiny import TinyFluxConfig, build_tiny_pipeline, build_tiny_sd3_pipeline  # noqa: E402
from alignbench.sampling.plan import RolloutPlan, StepSpec, execute, recompute_log_prob  # noqa: E402


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd3")
    build_tiny_sd3_pipeline(seed=1).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sd3(sd3_dir):
    spec = get_model("sd3.5-medium", source=str(sd3_dir), height=32, width=32, dtype="float32",
                     max_sequence_length=20)
    return spec.load("cpu")


def test_pack_and_unpack_are_inverse_and_token_major():
    z = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    x = pack_latents(z)
    assert x.shape == (2, 6, 12) and torch.equal(unpack_latents(x, 4, 6), z)
    # token 0 holds the top-left 2×2 patch of every channel, channel-major
    assert x[0, 0].tolist() == [z[0, c, i, j].item() for c in range(3) for i in range(2) for j in range(2)]


def test_sd3_spec_loads_the_saved_pipeline_with_flow_grpo_settings(sd3):
    spec = get_model("sd3.5-medium")
    assert (spec.family, spec.train_steps, spec.eval_steps, spec.true_cfg_scale, spec.height) == ("sd3", 10, 40, 4.5, 512)
    assert isinstance(sd3, SD3Backbone) and sd3.latent_shape == (16, 16)
    # the pipeline's own grid, set_timesteps(N): s uniform from 1 to the scheduler's smallest training σ
    # (σ = 1/1000 shifted), then SD3.5's static shift 3, σ = 3s / (1 + 2s)
    s = torch.linspace(1.0, 3e-3 / (1 + 2e-3), 10, dtype=torch.float64)
    assert torch.allclose(sd3.sigmas(10)[:-1], 3 * s / (1 + 2 * s), atol=1e-6) and sd3.sigmas(10)[-1] == 0


def test_sd3_velocity_is_the_pipelines_transformer_call_with_cfg(sd3):
    """v = v(∅) + w·(v(c) − v(∅)) with the transformer called as StableDiffusion3Pipeline calls it
    (timestep σ·1000, the [N, 16, h, w] latents), two rows per sample counted."""
    pipe = sd3.pipe
    emb = sd3.encode_prompts(["a photo of a cat"])
    neg = sd3.encode_prompts([""])
    x = sd3.initial_noise([3])
    n0 = sd3.nfe
    v = sd3.velocity(x, 0.6, emb)
    assert sd3.nfe - n0 == 2
    z = unpack_latents(x, 8, 8)
    with torch.no_grad():
        both = pipe.transformer(hidden_states=torch.cat([z, z]), timestep=torch.tensor([600.0, 600.0]),
                                encoder_hidden_states=torch.cat([emb.prompt_embeds, neg.prompt_embeds]),
                                pooled_projections=torch.cat([emb.pooled, neg.pooled]), return_dict=False)[0]
    ref = both[1:] + 4.5 * (both[:1] - both[1:])
    torch.testing.assert_close(v, pack_latents(ref), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sd3_ratio_is_one_for_a_tree_rollout(sd3, reduction):
    """The recomputed log-probs of the stored transitions equal the stored ones (specs §0), here on
    a TMPO-like tree with LoRA attached, so that ratio = exp(Δ) = 1."""
    if not sd3.lora_parameters():
        sd3.add_lora(4, 8, seed=0)
    plan = RolloutPlan(2, [StepSpec("ode"), StepSpec("cps", 0.7, 2, True), StepSpec("flow_sde", 0.7, 2, True),
                           StepSpec("ode")])
    emb = sd3.encode_prompts(["a photo of a cat", "a red bus"])
    ro = execute(sd3, plan, emb, [[0, 1], [2, 3]], generator=torch.Generator().manual_seed(0), reduction=reduction)
    lp, _ = recompute_log_prob(sd3, ro, emb, reduction=reduction)
    assert torch.exp(lp - ro.log_prob).sub(1).abs().max() < 1e-4


def test_sd3_lora_targets_the_joint_attention_projections(sd3):
    names = {n.rsplit(".lora_", 1)[0] for n, _ in sd3.transformer.named_parameters() if "lora_" in n}
    assert any(n.endswith("attn.add_q_proj") for n in names) and any(n.endswith("attn.to_out.0") for n in names)
    assert not any(".ff." in n for n in names)


@pytest.fixture(scope="module")
def pick_task(tmp_path_factory):
    """A task YAML with natural prompts in local files and the pickscore reward, and a tiny PickScore."""
    from alignbench.rewards.pretrained import save_tiny_clip_reward

    root = tmp_path_factory.mktemp("pick")
    pick_dir = root / "pickscore"
    save_tiny_clip_reward(pick_dir)
    prompts = ["a cat on a sofa", "a red bus in the rain", "two dogs at the beach", "a castle at night"]
    (root / "train.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (root / "test.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[:2]))
    (root / "pick.yaml").write_text(textwrap.dedent("""\
        name: pickscore-local
        description: PickScore on local natural prompts
        format: prompt
        domains:
          natural:
            prompts: {train: train.jsonl, test: test.jsonl}
            reward: pickscore
            train_reward: pickscore
            metrics: [pickscore]
        """))
    return root / "pick.yaml", pick_dir


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    """A tiny random DINOv2 for the natural domain's diversity features."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    out = tmp_path_factory.mktemp("dino")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=28, patch_size=14)).save_pretrained(out)
    BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("flux")
    cfg = TinyFluxConfig(image_size=32, vae_channels=(8, 8, 8), text_dim=16, text_heads=2, num_layers=1,
                         num_single_layers=1, attention_head_dim=8, num_attention_heads=2, axes_dims_rope=(2, 2, 4),
                         guidance_embeds=True)
    build_tiny_pipeline(cfg, seed=2).save_pretrained(out)
    return out


RUN = ["--iterations", "2", "--set", "eval.max_prompts=2", "--set", "eval.images_per_prompt=2", "--set",
       "eval.images_per_tag=null", "--set", "eval.steps=3", "--set", "protocol.train_steps=4", "--set",
       "protocol.group_size=4", "--set", "protocol.prompts_per_iteration=1", "--set", "protocol.lora_rank=4"]
ALGOS = {"flow_grpo": [], "tmpo": ["algo.children=2", "algo.early=[1,2]", "algo.late=[1,2]", "algo.s_max=2"],
         "mixgrpo": ["algo.window=2", "algo.shift_every=1"], "treegrpo": ["algo.fanout=2", "algo.window=2"],
         "gardo": []}


@pytest.mark.parametrize("model", ["sd3.5-medium", "flux-dev"])
def test_every_algorithm_runs_two_iterations_on_a_real_architecture(tmp_path, model, sd3_dir, flux_dir, pick_task,
                                                                   dino_dir):
    task, pick_dir = pick_task
    src = sd3_dir if model == "sd3.5-medium" else flux_dir
    model_set = ["model.height=32", "model.width=32", "model.dtype=float32", "model.max_sequence_length=20"]
    for algo, extra in ALGOS.items():
        out = tmp_path / algo
        args = ["run", "--algo", algo, "--task", str(task), "--model", model, "--out", str(out), *RUN,
                "--set", f"model.source={src}", "--set", f"reward.source={pick_dir}",
                "--set", f"eval.features_source={dino_dir}"]
        for s in [*model_set, *extra]:
            args += ["--set", s]
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, f"{algo}: {res.output}"
        (run_json,) = out.rglob("run.json")
        meta = json.loads(run_json.read_text())
        assert meta["status"] == "finished" and meta["config"]["model"]["name"] == model
        assert meta["config"]["reward"]["source"] == str(pick_dir)
        rows = [json.loads(line) for line in (run_json.parent / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(r["nfe"] > 0 for r in rows)
        summary = json.loads((run_json.parent / "eval.json").read_text())
        assert "pickscore" in json.dumps(summary)
        assert (run_json.parent / "samples" / "eval_grid.png").is_file()


def test_offline_hub_model_is_one_line_naming_the_repository(tmp_path, monkeypatch, pick_task):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = CliRunner().invoke(app, ["run", "--algo", "tmpo", "--task", str(pick_task[0]), "--model", "sd3.5-medium",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "stabilityai/stable-diffusion-3.5-medium" in res.output and "Traceback" not in res.output


def test_offline_flux_dev_on_the_pickscore_task_names_the_model_repository(tmp_path, monkeypatch):
    """The issue's check: `alignbench run --model flux-dev --task pickscore` offline exits 2 with one
    line naming the repository it could not load."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ALIGNBENCH_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(app, ["run", "--model", "flux-dev", "--task", "pickscore", "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "black-forest-labs/FLUX.1-dev" in lines[0], res.output
