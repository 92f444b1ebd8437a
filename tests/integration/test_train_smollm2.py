"""`tunedlens train demo` end to end on the real SmolLM2, on its embedded own text, small budget."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tunedlens import LogitLens, load_lens, load_model
from tunedlens.data import pack_blocks
from tunedlens.engine import layer_kl

pytestmark = pytest.mark.integration


def test_train_demo_beats_the_logit_lens(tmp_path):
    out = tmp_path / "lens"
    command = [
        sys.executable,
        "-m",
        "tunedlens",
        "train",
        "demo",
        "--out",
        str(out),
        "--tokens",
        "8192",
        "--seq-len",
        "128",
        "--batch-size",
        "4",
        "--tokens-per-step",
        "2048",
        "--val-tokens",
        "512",
        "--seed",
        "1",
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TUNEDLENS_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    provenance = json.loads((out / "provenance.json").read_text())
    training = provenance["training"]
    # The demo's own text, from the seed shipped with tunedlens: nothing sampled.
    assert training["data"] == "self" and training["train_tokens"] == 8192
    assert "shipped with tunedlens" in result.stdout + result.stderr
    assert training["self_text"]["sampled_now"] == 0
    assert training["lstsq_tokens"] == 2048 and len(training["val_kl_bits"]) == 30  # 1/4 of 8192
    assert provenance["model"]["model_type"] == "llama"

    model, tokenizer = load_model("demo")
    held_out = pack_blocks(
        "stdlib-prose", tokenizer, seq_len=128, n_sequences=4, seed=99
    )  # other English
    tuned = layer_kl(load_lens(out, model), model, held_out.tokens)
    logit = layer_kl(LogitLens(model), model, held_out.tokens)
    assert tuned.mean() < 0.5 * logit.mean()
    assert (tuned[:25] < logit[:25]).all()
    assert torch.isfinite(tuned).all()

    # `tunedlens eval` on the same lens: every report, the trained lens closer than the logit lens.
    report_dir = tmp_path / "eval"
    command = [
        sys.executable,
        "-m",
        "tunedlens",
        "eval",
        "demo",
        "--lens",
        str(out),
        "--data",
        "stdlib",
        "--tokens",
        "512",
        "--seq-len",
        "128",
        "--seed",
        "7",
        "--out",
        str(report_dir),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((report_dir / "metrics.json").read_text())
    lenses = metrics["lenses"]
    trained, logit = lenses["lens"]["kl_bits"][:30], lenses["logit"]["kl_bits"][:30]
    assert sum(trained) < 0.5 * sum(logit)
    assert lenses["logit"]["kl_bits"][30] < 1e-3 and lenses["logit"]["top1_agree"][30] == 1.0
    assert metrics["prompts"]["used"] >= 40 and set(metrics["gates"]["lens"]) == set("ABCDE")
    assert metrics["gates"]["lens"]["C"]["pass"]  # the output row decodes like the model
    for name in ("records.csv", "pure-next-token.csv", "summary.md", "kl.png", "kl.html"):
        assert (report_dir / name).stat().st_size > 0
