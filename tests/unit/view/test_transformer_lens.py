"""A trajectory from a real TransformerLens ActivationCache (TransformerBridge over HF weights)."""

import pytest
import torch

from tiny_models import random_lens
from tunedlens import PredictionTrajectory
from tunedlens.models import load_model

transformer_lens = pytest.importorskip("transformer_lens", reason="extra 'tl' not installed")


def test_cache_trajectory_equals_the_model_trajectory(tiny_model_dir):
    from transformer_lens.model_bridge import TransformerBridge

    model, tokenizer = load_model(tiny_model_dir)
    bridge = TransformerBridge.boot_transformers(
        str(tiny_model_dir), hf_model=model, tokenizer=tokenizer
    )
    lens = random_lens(model)
    ids = tokenizer("w1 w2 w3 w4 w5", return_tensors="pt").input_ids
    logits, cache = bridge.run_with_cache(ids)
    from_cache = PredictionTrajectory.from_lens_and_cache(
        lens, cache, ids, logits.detach(), keep_logprobs=True
    )
    direct = PredictionTrajectory.from_lens_and_model(lens, model, ids, keep_logprobs=True)
    torch.testing.assert_close(from_cache.logprobs, direct.logprobs)
    mid = PredictionTrajectory.from_lens_and_cache(
        lens, cache, ids, logits.detach(), residual_component="resid_mid", keep_logprobs=True
    )
    assert mid.logprobs.shape == direct.logprobs.shape
    # TransformerLens's own resid_mid is our mid point: a mid-point lens reads both alike.
    from tunedlens import TunedLens

    mid_lens = TunedLens.from_model(model, points="mid")
    with torch.no_grad():
        mid_lens.translator.weight.add_(torch.randn_like(mid_lens.translator.weight) * 0.1)
    from_tl = PredictionTrajectory.from_lens_and_cache(
        mid_lens, cache, ids, logits.detach(), residual_component="resid_mid", keep_logprobs=True
    )
    ours = PredictionTrajectory.from_lens_and_model(mid_lens, model, ids, keep_logprobs=True)
    assert from_tl.row_labels == ours.row_labels == ["0.mid", "1.mid", "output"]
    assert from_tl.rows == ours.rows == [0, 1, 2]
    torch.testing.assert_close(from_tl.logprobs, ours.logprobs)
    with pytest.raises(ValueError, match="reads 'mid' points"):
        PredictionTrajectory.from_lens_and_cache(mid_lens, cache, ids)
