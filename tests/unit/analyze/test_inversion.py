"""Unembedding inversion: a round trip through the head recovers the distribution."""

import pytest
import torch

from tiny_models import tiny_model
from tunedlens import LogitLens, collect_residuals, invert_unembed
from tunedlens.metrics import kl_divergence


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma2"])
def test_round_trip(model_type, input_ids):
    model = tiny_model(model_type)
    unembed = LogitLens(model).unembed
    hidden = collect_residuals(model, input_ids).hidden[-1][0, :4]
    with torch.no_grad():
        target = unembed(hidden)
    result = invert_unembed(unembed, target)
    assert result.hidden.shape == hidden.shape and result.normalized.shape == hidden.shape
    assert result.kl.max() < 1e-4 and result.converged
    assert result.kl.sum() <= result.initial_kl.sum() + 1e-7
    with torch.no_grad():
        decoded = unembed(result.hidden).log_softmax(-1)
        torch.testing.assert_close(decoded.exp(), target.softmax(-1), atol=1e-3, rtol=0)
        # The post-norm state is what the norm makes of the pre-norm one.
        torch.testing.assert_close(result.normalized, unembed.normalize(result.hidden))
        assert kl_divergence(target.log_softmax(-1), decoded).max() < 1e-4


def test_prior_pulls_towards_its_mean(input_ids):
    model = tiny_model("llama")
    unembed = LogitLens(model).unembed
    hidden = collect_residuals(model, input_ids).hidden[-1][0, :2]
    with torch.no_grad():
        target = unembed(hidden)
    free = invert_unembed(unembed, target)
    pulled = invert_unembed(unembed, target, prior_mean=hidden, prior_weight=10.0)
    assert (pulled.hidden - hidden).norm() < (free.hidden - hidden).norm()


def test_wrong_vocabulary_is_refused():
    unembed = LogitLens(tiny_model("llama")).unembed
    with pytest.raises(ValueError, match="vocabulary"):
        invert_unembed(unembed, torch.zeros(3, 7))
