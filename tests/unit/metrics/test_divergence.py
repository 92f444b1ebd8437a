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


def test_the_fused_training_kl_equals_kl_divergence_and_its_gradient():
    """kl_to_target (the training loss) against autograd through kl_divergence: values and
    gradients, several lenses broadcast against one target, and a target with zero probabilities."""
    from tunedlens.metrics.divergence import KLTarget, kl_to_target

    generator = torch.Generator().manual_seed(0)
    target = torch.randn(6, 40, generator=generator).mul(4)
    target[0, :5] = -1e4  # probabilities that underflow to exactly 0
    target = target.log_softmax(-1)
    assert (target.exp()[0, :5] == 0).all()
    logits = torch.randn(3, 6, 40, generator=generator).mul(3).requires_grad_()
    weights = torch.tensor([[1.0], [2.0], [-0.5]])

    expected = kl_divergence(target, logits.log_softmax(-1))
    (expected * weights).sum().backward()
    expected_grad, logits.grad = logits.grad.clone(), None
    got = kl_to_target(KLTarget(target), logits)
    (got * weights).sum().backward()

    assert got.shape == (3, 6)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.grad, expected_grad, rtol=1e-5, atol=1e-6)
    same = kl_to_target(
        KLTarget(target), target.unsqueeze(0) + 7.0
    )  # shifted logits: same distribution
    assert same.abs().max() < 1e-4
