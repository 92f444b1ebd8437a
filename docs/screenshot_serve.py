"""Draw docs/serve.png: the web explorer on the embedded default, in headless chromium.

Needs the main job's lens (``tunedlens train demo --out lens-demo ...``), the ``serve`` extra,
playwright and Debian's chromium. Usage: python docs/screenshot_serve.py --lens lens-demo
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
from playwright.sync_api import sync_playwright

PROMPT = "The capital of France is Paris. The capital of Germany is"


def main() -> None:
    """Serve the demo with the given lens, open the page in chromium, save the screenshot."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--lens", required=True)
    parser.add_argument("--out", default=str(Path(__file__).parent / "serve.png"))
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tunedlens", "serve", "demo", "--lens", args.lens, "--port", str(port)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(f"{url}/api/health")
                break
            except httpx.TransportError:
                time.sleep(0.5)
        lens = Path(args.lens.rstrip("/")).name
        query = urlencode({"prompt": PROMPT, "lenses": f"logit,{lens}", "stat": "entropy", "stride": 3})
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"]
            )
            page = browser.new_page(viewport={"width": 1700, "height": 1000})
            page.goto(f"{url}/?{query}")
            page.wait_for_function("document.querySelectorAll('#heatmaps table').length === 2")
            page.locator("td.cell").nth(11).click()  # the output row's last cell: its top-10
            page.wait_for_selector("#sparkline path.curve")
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:  # a loaded machine: do not leave it running
            server.kill()
            server.wait()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
