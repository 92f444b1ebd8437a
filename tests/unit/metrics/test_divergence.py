"""KL divergence on log-probabilities: non-negative, zero on identical inputs, not cross-entropy."""

import math

import torch

from tunedlens.metrics import NATS_TO_BITS, kl_divergence


def test_kl_is_non_negative_and_zero_on_identical_inputs():
    generator = torch.Generator().manual_seed(0)
    p = torch.randn(5, 7, 50, generator=generator).log_softmax(-1)
    q = torch.randn(5, 7, 50, generator=generator).log_softmax(-1)
    assert (kl_divergence(p, q) >= 0).all()
    assert torch.allclose(kl_divergence(p, p), torch.zeros(5, 7), atol=1e-6)


def test_kl_includes_the_target_entropy_and_handles_zero_probabilities():
    p = torch.tensor([0.5, 0.5, 0.0]).log()
    q = torch.tensor([0.25, 0.25, 0.5]).log()
    assert kl_divergence(p, q).item() == pytest_approx(math.log(2))  # CE would be log 4
    assert math.isfinite(kl_divergence(p, q).item())
    assert NATS_TO_BITS * math.log(2) == pytest_approx(1.0)


def pytest_approx(value):
    import pytest

    return pytest.approx(value, rel=1e-6)
