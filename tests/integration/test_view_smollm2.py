"""Looking through the lens on the real SmolLM2: the facade, generation, `tunedlens show`."""

import os
import subprocess
import sys

import pytest
import torch

from tunedlens import Lensed, TunedLens

pytestmark = pytest.mark.integration
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def lensed():
    return Lensed("demo")


def test_facade_on_smollm2(lensed, tmp_path):
    result = lensed.logit_lens(PROMPT, top_k=3, position=-1)
    assert [row.row for row in result] == list(range(31))
    assert [row.label for row in result] == [*map(str, range(30)), "output"]
    ids = lensed.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = lensed.model(ids).logits[0, -1].softmax(-1)
    top = result[-1].top[0]
    token_id, prob, text = top.id, top.prob, top.token
    # The readout's float32 head (blocked, possibly another BLAS) rounds the 576-term dot
    # products apart from the model's own forward by ~1e-4 in the logit, so ~2e-5 here.
    assert token_id == int(expected.argmax()) and prob == pytest.approx(
        float(expected.max()), abs=1e-4
    )
    assert text == lensed.tokenizer.decode([token_id])
    texts = [f"Line {i}: the capital of a country is its seat of government." for i in range(40)]
    options = dict(tokens=2 * 4 * 64, seq_len=64, batch_size=4)  # two steps of 4 x 64 tokens
    lens = lensed.train_lens(texts, **options, verbose=False, save_path=tmp_path / "lens")
    assert isinstance(lens, TunedLens)
    table = lensed.compare(PROMPT, lensed.load_lens(tmp_path / "lens"))
    logit, tuned = table.columns["logit lens"], table.columns["tuned lens"]
    assert len(logit) == 31 and logit[-1] == tuned[-1]  # the output row is the model's own


def test_greedy_generation_from_the_output_row(lensed):
    ids = lensed.tokenizer(PROMPT, return_tensors="pt").input_ids
    from tunedlens import LogitLens
    from tunedlens.analyze.generate import generate

    lens = LogitLens(lensed.model)
    ours = generate(lens, lensed.model, lens.output_row, ids, max_new_tokens=6)
    theirs = lensed.model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(ours, theirs)


def test_show_writes_a_png(tmp_path):
    out = tmp_path / "show.png"
    command = [
        sys.executable,
        "-m",
        "tunedlens",
        "show",
        "demo",
        PROMPT,
        "--stat",
        "all",
        "--out",
        str(out),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from PIL import Image

    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[1] > 300
