"""The explorer in a real browser: Debian's chromium driven by playwright, against a live server.

CI installs chromium (``.ci/run``); elsewhere these tests are skipped with the install command.
The screenshot lands in ``$TUNEDLENS_ARTIFACTS`` (default: the test's temporary folder).
"""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="needs Debian's chromium: apt-get update && apt-get install -y chromium",
)

from tunedlens import LogitLens, readout  # noqa: E402
from tunedlens.serve.app import create_app  # noqa: E402
from tunedlens.serve.session import ServeSession  # noqa: E402
from tunedlens.view.tokens import format_token  # noqa: E402

PROMPT = "w5 w17 w3 w99 w42 w8"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


EVAL = {
    "layers": [0, 1, 2],
    "kl_bits": [150.0, 2.5, 0.0],
    "gates": {
        "C": {"pass": False, "kl_after_temp_bits": 0.0712, "threshold": 0.05},
        "D": {"pass": True, "worst_delta_kl_bits": 0.25, "threshold": -0.1},
    },
    "report": "eval",
}


@pytest.fixture
def server(model, lens, tiny_tokenizer):
    session = ServeSession(
        model,
        tiny_tokenizer,
        {"logit": LogitLens(model), "tuned": lens},
        "tiny-llama",
        evals={"tuned": EVAL},
    )
    port = _free_port()
    config = uvicorn.Config(create_app(session), host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not running.started and time.time() < deadline:
        time.sleep(0.05)
    assert running.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(10)


@pytest.fixture
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser.new_page(viewport={"width": 1400, "height": 900})
        browser.close()


def _labels(page, lens: str):
    """Top-1 labels of a lens's heatmap, rows bottom (layer 0) to top (output)."""
    table = page.locator(
        f"section:has(h2:text-is('{lens}')) table, section:has(h2:has-text('{lens} (')) table"
    ).first
    rows = table.locator("tr").all()[1:]
    return [[cell.inner_text() for cell in row.locator("td.cell").all()] for row in reversed(rows)]


def test_the_explorer_end_to_end(server, page, model, lens, tiny_tokenizer, tmp_path):
    page.goto(server)
    page.wait_for_selector("#lens-a option[value=tuned]", state="attached")
    assert "tiny-llama" in page.inner_text("#model-line")
    page.fill("#prompt", PROMPT)
    page.select_option("#lens-a", "tuned")
    page.select_option("#lens-b", "logit")
    page.click("#run")
    page.wait_for_selector("#heatmaps table td.cell")
    # The cells' top-1 tokens are the library's readout for this prompt.
    ids = tiny_tokenizer(PROMPT, return_tensors="pt").input_ids
    expected = readout(model, {"tuned": lens}, ids, stats=(), top_k=1)["tuned"].top_ids[0, :, :, 0]
    want = [[format_token(tiny_tokenizer, int(i)) for i in row] for row in expected]
    assert _labels(page, "tuned") == want
    assert page.locator("#heatmaps table").count() == 2  # two lenses side by side
    assert "prompt=" in page.url and "lenses=tuned%2Clogit" in page.url

    # Another statistic: the same cells, other values.
    before = page.locator("td.cell").first.get_attribute("data-value")
    page.select_option("#stat", "kl")
    page.click("#run")
    page.wait_for_function("document.querySelector('.legend').textContent.includes('KL')")
    assert page.locator("td.cell").first.get_attribute("data-value") != before
    assert "stat=kl" in page.url

    # A cell's top-10 and its sparkline, opened from the keyboard.
    cell = page.locator("td.cell").first
    cell.focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#details:not([hidden]) #top10 li")
    assert page.locator("#top10 li").count() == 10
    page.wait_for_selector("#sparkline path.curve")

    # Compare two prompts of equal length: JS per cell, a/b labels where they differ.
    page.fill("#other", "w5 w17 w9 w99 w42 w8")
    page.click("#compare")
    page.wait_for_selector("table.compare td.cell")
    labels = [c.inner_text() for c in page.locator("table.compare td.cell").all()]
    assert any("/" in label for label in labels)

    # An empty prompt: the error is shown in the page.
    page.fill("#prompt", "")
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    assert "empty" in page.inner_text("#error")

    folder = Path(os.environ.get("TUNEDLENS_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    page.fill("#prompt", PROMPT)
    page.click("#run")
    page.wait_for_function(
        "document.getElementById('status').textContent === '' && "
        "document.querySelectorAll('#heatmaps table').length === 2"
    )
    page.screenshot(path=str(folder / "serve.png"), full_page=True)
    assert (folder / "serve.png").stat().st_size > 10_000


def test_a_shared_url_restores_the_view_and_exports_work(server, page, tmp_path):
    page.goto(f"{server}/?prompt=w1%20w2%20w3&lenses=tuned&stat=entropy")
    page.wait_for_selector("#heatmaps table td.cell")
    assert page.input_value("#prompt") == "w1 w2 w3"
    assert page.locator("td.cell").count() == 3 * 3
    with page.expect_download() as download:
        page.click("#export-json")
    data = Path(download.value.path()).read_text()
    assert '"kind": "readout"' in data and '"tuned"' in data
    with page.expect_download() as download:
        page.click("#export-png")
    assert Path(download.value.path()).read_bytes()[:4] == b"\x89PNG"


def test_colour_legend_shared_scale_eval_curve_gates_and_small_probabilities(server, page):
    page.goto(f"{server}/?prompt={PROMPT.replace(' ', '%20')}&lenses=tuned,logit&stat=kl")
    page.wait_for_selector("#heatmaps table td.cell")
    # One colour scale for both lenses, on a log scale for KL, and a legend that says so.
    tables = page.locator("#heatmaps table").all()
    scales = [(t.get_attribute("data-low"), t.get_attribute("data-high")) for t in tables]
    assert len(scales) == 2 and scales[0] == scales[1]
    assert tables[0].get_attribute("data-scale") == "log"
    legend = page.locator("#colour-legend svg")
    assert "log scale" in legend.get_attribute("aria-label")
    assert "one scale for both lenses" in page.inner_text("#colour-legend")
    assert len(legend.locator("text").all()) >= 3  # tick values and the caption
    page.select_option("#stat", "max-prob")
    page.click("#run")
    page.wait_for_function("document.querySelector('#heatmaps table').dataset.scale === 'linear'")
    assert "linear" in page.locator("#colour-legend svg").get_attribute("aria-label")

    # The --eval KL curve has axes with numbers and names the output row.
    chart = page.locator("svg.kl-chart")
    labels = [t.text_content() for t in chart.locator("text").all()]
    assert "output" in labels and "row" in labels and "KL (bits, log scale)" in labels
    assert "100" in labels and "0.001" in labels  # decades, down to the floor for KL = 0
    # Gates show what was measured and the threshold beside the result.
    rows = [r.inner_text() for r in page.locator("table.gates tr").all()]
    assert rows[0].split() == ["gate", "result", "measured", "threshold"]
    assert "FAIL" in rows[1] and "0.0712" in rows[1] and "0.05" in rows[1]
    assert "pass" in rows[2] and "0.25" in rows[2] and "-0.1" in rows[2]

    formatted = page.evaluate("[0, 3e-7, 5e-5, 0.0123, 0.5].map(formatPercent)")
    assert formatted == ["0 %", "<0.01 %", "<0.01 %", "1.23 %", "50.00 %"]
    marked = page.evaluate("['-', '.', '␣-', 'w5', 'é'].map(cellText)")
    assert marked == ["‹-›", "‹.›", "␣-", "w5", "é"]
