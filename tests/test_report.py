"""`alignbench report`: the static HTML page, opened in a real headless Chromium (Debian's package,
driven by Playwright): no console errors, no missing files, a table row per algorithm, a screenshot."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from alignbench.cli import app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TINY = ["--iterations", "1", "--set", "eval.max_prompts=2", "--set", "eval.images_per_tag=null", "--set", "eval.images_per_prompt=2", "--set", "eval.steps=3",
        "--set", "protocol.train_steps=6", "--set", "protocol.group_size=4", "--set", "protocol.prompts_per_iteration=1"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A tiny two-algorithm comparison with its leaderboard, plots and runs."""
    root = tmp_path_factory.mktemp("cmp")
    res = CliRunner().invoke(app, ["compare", "--task", "geneval", "--algos", "flow_grpo,mixgrpo", "--seeds", "1",
                                   "--out", str(root / "runs"), "--report", str(root / "geneval"), *TINY])
    assert res.exit_code == 0, res.output
    return root


def test_report_page_has_the_leaderboard_plots_and_before_after_grids(compared, tmp_path):
    out = tmp_path / "page"
    res = CliRunner().invoke(app, ["report", "--task", "geneval", "--results", str(compared / "geneval"),
                                   "--runs", str(compared / "runs"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = (out / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # no CDN, nothing remote
    for algo in ("flow_grpo", "mixgrpo"):
        assert (out / "samples" / f"{algo}_before.png").is_file() and (out / "samples" / f"{algo}_after.png").is_file()
    # the base grid is the same for both algorithms: same prompts and noises
    assert (out / "samples" / "flow_grpo_before.png").read_bytes() == (out / "samples" / "mixgrpo_before.png").read_bytes()
    board = json.loads((compared / "geneval" / "leaderboard.json").read_text())
    assert page.count("<tr") == len(board["rows"]) + 1  # header + base model + one per algorithm
    # without --runs it uses the runs published beside the leaderboard (compare copies their grids)
    res = CliRunner().invoke(app, ["report", "--task", "geneval", "--results", str(compared / "geneval"),
                                   "--out", str(tmp_path / "page2")])
    assert res.exit_code == 0 and "no sample grids" not in res.output, res.output
    assert (tmp_path / "page2" / "samples" / "mixgrpo_after.png").read_bytes() == \
        (out / "samples" / "mixgrpo_after.png").read_bytes()
    res = CliRunner().invoke(app, ["report", "--task", "geneval", "--results", str(tmp_path / "none")])
    assert res.exit_code == 2 and "no leaderboard.json" in res.output


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_report_page_loads_in_headless_chromium_without_errors(compared, tmp_path):
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    out = tmp_path / "page"
    CliRunner().invoke(app, ["report", "--task", "geneval", "--results", str(compared / "geneval"),
                             "--runs", str(compared / "runs"), "--out", str(out)])
    errors, failed, loaded = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.on("response", lambda r: loaded.append((r.url, r.status)))
        page.goto((out / "index.html").as_uri())
        page.wait_for_load_state("load")
        rows = page.locator("#leaderboard tbody tr")
        names = [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())]
        broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                               ".map(i => i.src)")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == [] and failed == [] and broken == []
    assert sorted(names) == ["base model", "flow_grpo", "mixgrpo"]
    assert sum(u.endswith(".png") for u, _ in loaded) >= 4  # plots and sample grids were fetched
    assert (tmp_path / "report.png").stat().st_size > 10_000
