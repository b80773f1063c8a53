"""The command line as a user runs it (Typer's CliRunner)."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from alignbench.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], lines[0]


def test_list_tasks_and_rewards():
    out = run("list", "tasks").output
    assert "geneval" in out and "ocr" in out and "shapes" in out
    assert "geneval-shapes" in run("list", "rewards").output
    wide = runner.invoke(app, ["list", "algorithms"], env={"COLUMNS": "300"}, catch_exceptions=False).output
    assert "flow_grpo" in wide and "tmpo" in wide and "Softmax Trajectory Balance" in wide
    assert "Liu et al., Flow-GRPO" in wide and "│                 24 │" in wide  # source and paper group size


def test_show_algorithm_prints_paper_defaults_and_presets():
    out = run("show", "algorithm", "tmpo").output
    assert "paper: 3e-5" in out and "preset tiny-shapes" in out and "clip_range" in out


@pytest.mark.parametrize("args, fragments", [
    (("list", "algoritms"), ("unknown kind 'algoritms'", "allowed: algorithms, models, rewards, tasks", "did you mean 'algorithms'")),
    (("show", "task", "genevel"), ("unknown task 'genevel'", "allowed: aesthetic, bench, clipscore, geneval, hpsv2, imagereward, ocr, pickscore, preference", "did you mean 'geneval'")),
    (("show", "algorithm", "tmp"), ("unknown algorithm 'tmp'", "allowed: flow_grpo, gardo, mixgrpo, tmpo, treegrpo", "did you mean 'tmpo'")),
    (("show", "model", "tiny-shape"), ("unknown model 'tiny-shape'", "allowed: flux-dev, flux-dev-random, sd3.5-medium, sd35m-random, tiny-shapes",
                                       "did you mean 'tiny-shapes'")),
    (("world", "sample", "--task", "gen-eval", "--n", "1"), ("unknown task 'gen-eval'", "did you mean 'geneval'")),
    (("world", "sample", "--n", "1", "--set", "size_max=80"), ("size_max",)),
    (("world", "sample", "--n", "1", "--set", "colour=red"), ("colour: unknown field",)),
])
def test_bad_names_exit_2_with_one_line(args, fragments):
    assert_one_line_error(run(*args), *fragments)


def test_show_task_prints_prompt_counts():
    out = run("show", "task", "geneval").output
    assert "train 539, test 63" in out


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sample")
    result = run("world", "sample", "--task", "geneval", "--n", "6", "--out", str(d / "sheet.png"),
                 "--save-dir", str(d / "s"), "--cols", "3")
    assert result.exit_code == 0, result.output
    return d


def test_world_sample_writes_sheet_images_and_metadata(sample_dir):
    with Image.open(sample_dir / "sheet.png") as im:
        assert im.size[0] == 3 * (64 * 3 + 12) and im.size[1] > 2 * 64 * 3
    assert len(list((sample_dir / "s" / "images").glob("*.png"))) == 6
    assert len((sample_dir / "s" / "metadata.jsonl").read_text().splitlines()) == 6


def test_score_reports_non_images_and_scores_the_rest(sample_dir, tmp_path):
    images = sample_dir / "s" / "images"
    (images / "notes.txt").write_text("not an image")
    (images / "00005_broken.png").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "scores.jsonl"
    result = run("score", "--task", "geneval", "--images", str(images),
                 "--metadata", str(sample_dir / "s" / "metadata.jsonl"), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "skipped notes.txt" in result.output and "skipped 00005_broken.png: not a readable image" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(r["accuracy"] == 1.0 for r in rows)
    assert {"image", "index", "prompt", "tag", "partial", "strict", "detections"} <= set(rows[0])
    assert "overall" in result.output


def test_score_malformed_metadata_names_file_line_and_field(sample_dir, tmp_path):
    lines = (sample_dir / "s" / "metadata.jsonl").read_text().splitlines()
    bad = json.loads(lines[2])
    bad["include"][0]["count"] = "two"
    meta = tmp_path / "meta.jsonl"
    meta.write_text("\n".join(lines[:2] + [json.dumps(bad)] + lines[3:]) + "\n")
    result = run("score", "--task", "geneval", "--images", str(sample_dir / "s" / "images"), "--metadata", str(meta))
    assert_one_line_error(result, f"{meta}:3:", "field 'include.0.count'")
    meta.write_text(lines[0] + "\n{not json\n")
    assert_one_line_error(run("score", "--task", "geneval", "--images", str(sample_dir), "--metadata", str(meta)),
                          f"{meta}:2: invalid JSON")
    meta.write_text(lines[0].replace('"circle"', '"dog"').replace('"square"', '"dog"').replace('"triangle"', '"dog"')
                    .replace('"diamond"', '"dog"').replace('"cross"', '"dog"').replace('"ring"', '"dog"') + "\n")
    assert_one_line_error(run("score", "--task", "geneval", "--images", str(sample_dir), "--metadata", str(meta)),
                          f"{meta}:1:", "'dog' is not a class")


def test_score_with_no_scorable_images_fails_cleanly(tmp_path, sample_dir):
    (tmp_path / "junk.txt").write_text("x")
    result = run("score", "--task", "geneval", "--images", str(tmp_path),
                 "--metadata", str(sample_dir / "s" / "metadata.jsonl"), "--out", str(tmp_path / "o.jsonl"))
    assert result.exit_code == 2 and "no images" in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_world_splits_check_matches_shipped():
    result = run("world", "splits", "--check")
    assert result.exit_code == 0 and "byte-identical" in result.output


def test_task_yaml_with_bad_field_names_file_and_field(tmp_path):
    bad = tmp_path / "mytask.yaml"
    bad.write_text("name: t\ndescription: d\nformat: geneval\ndomains:\n  shapes:\n    prompts: {train: a, test: b}\n"
                   "    reward: geneval-shapes\n    train_reward: partial\n    metrics: []\n")
    assert_one_line_error(run("show", "task", str(bad)), f"{bad}: domains.shapes.metrics")


@pytest.mark.parametrize("argv, fragment", [
    (["world", "sample", "--n", "0"], "alignbench world sample: Invalid value for '--n'"),
    (["world", "sample", "--bogus"], "No such option: --bogus"),
    (["score", "--task", "geneval"], "alignbench score: Missing option '--images'"),
])
def test_console_script_usage_errors_are_one_line(monkeypatch, capsys, argv, fragment):
    """The installed entry point (main), not CliRunner: option errors end in one line, exit 2."""
    from alignbench.cli import main

    monkeypatch.setattr("sys.argv", ["alignbench", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert exc.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert captured.out == ""


def test_console_script_help_and_success_exit_codes(monkeypatch, capsys):
    from alignbench.cli import main

    for argv, code in ((["--help"], 0), (["list", "tasks"], 0), ([], 2)):
        monkeypatch.setattr("sys.argv", ["alignbench", *argv])
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == code, argv
        assert "Usage" in capsys.readouterr().out or argv == ["list", "tasks"]


def test_list_and_show_models():
    out = run("list", "models").output
    assert "tiny-shapes" in out and "flux-dev" in out
    shown = run("show", "model", "flux-dev").output
    assert "black-forest-labs/FLUX.1-dev" in shown and "domain: natural" in shown and "eval_steps: 28" in shown


def test_plain_progress_prints_each_iteration_and_other_loops_every_30_seconds():
    import io

    from rich.console import Console

    from alignbench.cli import PlainProgress

    buf = io.StringIO()
    now = [0.0]
    bar = PlainProgress(Console(file=buf, width=200), every_s=30)
    bar._clock = lambda: now[0]
    it = bar.add_task("train", total=3, per_step=True)
    loop = bar.add_task("sample", total=100)
    for k in range(1, 101):  # 100 updates over 50 s: the start, one at 30 s, and the end
        now[0] = k * 0.5
        bar.update(loop, completed=k)
    bar.update(it, completed=1, description="train reward 0.5")
    bar.update(it, completed=1)  # unchanged count: no line
    bar.update(it, completed=2, description="train reward 0.6")
    lines = buf.getvalue().splitlines()
    assert lines == ["train: 0/3 (0 s)", "sample: 0/100 (0 s)", "sample: 60/100 (30 s)", "sample: 100/100 (50 s)",
                     "train reward 0.5: 1/3 (50 s)", "train reward 0.6: 2/3 (50 s)"]


def test_a_bad_speedups_variable_is_one_line_and_leaves_no_run_directory(tmp_path):
    import subprocess
    import sys

    env = {**__import__("os").environ, "ALIGNBENCH_SPEEDUPS": "fast"}
    res = subprocess.run([sys.executable, "-m", "alignbench.cli", "run", "--algo", "tmpo", "--task", "geneval",
                          "--out", str(tmp_path / "runs")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == "error: ALIGNBENCH_SPEEDUPS: 'fast' is not allowed; allowed: on, off"
    assert not (tmp_path / "runs").exists()
