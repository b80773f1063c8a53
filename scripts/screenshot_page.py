"""Open a local HTML page in headless Chromium (Debian's package, driven by Playwright), print any
console errors and failed requests, and save a full-page screenshot.

    python scripts/screenshot_page.py results/geneval/index.html docs/img/report_geneval.png [--width 1280]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("page", type=Path)
    ap.add_argument("png", type=Path)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--clip-height", type=int, default=0, help="keep only the top N pixels (0: the full page)")
    a = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("error: chromium not found; apt-get install chromium")
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": a.width, "height": 900})
        page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
        page.goto(a.page.resolve().as_uri())
        page.wait_for_load_state("load")
        a.png.parent.mkdir(parents=True, exist_ok=True)
        if a.clip_height:
            page.screenshot(path=str(a.png), clip={"x": 0, "y": 0, "width": a.width, "height": a.clip_height})
        else:
            page.screenshot(path=str(a.png), full_page=True)
        rows = page.locator("#leaderboard tbody tr").count()
        browser.close()
    print(f"{a.page}: {rows} leaderboard rows, {len(errors)} errors; screenshot {a.png}")
    for e in errors:
        print(e)


if __name__ == "__main__":
    main()
