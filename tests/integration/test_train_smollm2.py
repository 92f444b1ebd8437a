"""`tunedlens train demo` end to end on the real SmolLM2, with the embedded corpus, small budget."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tunedlens import LogitLens, TunedLens, load_model
from tunedlens.data import pack_blocks
from tunedlens.metrics import layer_kl

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
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    provenance = json.loads((out / "provenance.json").read_text())
    training = provenance["training"]
    assert training["data"] == "stdlib" and training["train_tokens"] == 8192
    assert training["lstsq_tokens"] == 512 and len(training["val_kl_bits"]) == 30
    assert provenance["model"]["model_type"] == "llama"

    model, tokenizer = load_model("demo")
    held_out = pack_blocks("stdlib", tokenizer, seq_len=128, n_sequences=4, seed=99)
    tuned = layer_kl(TunedLens.load(out, model), model, held_out.tokens)
    logit = layer_kl(LogitLens(model), model, held_out.tokens)
    assert tuned.mean() < 0.5 * logit.mean()
    assert (tuned[:25] < logit[:25]).all()
    assert torch.isfinite(tuned).all()
