"""Lenses written by the reference tuned-lens 0.2.0 reproduce the logits it computed."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from paths import DATA
from tunedlens.arch import collect_residuals
from tunedlens.lenses import LogitLens, load_lens


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "llama"])
def test_reference_fixture_is_reproduced(family):
    root = DATA / "reference" / family
    expected = load_file(root / "expected.safetensors")
    model = AutoModelForCausalLM.from_pretrained(root / "model").eval()
    tuned = load_lens(root / "lens", model)  # strict: the unembedding hash must match
    logit = LogitLens(model)
    residuals = collect_residuals(model, expected["input_ids"])
    torch.testing.assert_close(residuals.logits, expected["model_logits"], rtol=0, atol=1e-4)
    for i in range(residuals.output_row):
        hidden = residuals.hidden[i]
        assert (tuned(hidden, i) - expected[f"tuned_logits_{i}"]).abs().max() < 1e-4
        assert (logit(hidden, i) - expected[f"logit_lens_logits_{i}"]).abs().max() < 1e-4
        # The fixture's translators are non-zero, so the two lenses really differ.
        assert (tuned(hidden, i) - logit(hidden, i)).abs().max() > 1e-2
