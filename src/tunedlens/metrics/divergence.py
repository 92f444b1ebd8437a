"""Divergences between categorical distributions given as log-probabilities."""

from __future__ import annotations

import math

import torch

NATS_TO_BITS = 1 / math.log(2)
"""Multiply a quantity in nats by this to get bits."""


def kl_divergence(target_logprobs: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ q) in nats over the last dimension: ``Σ p (log p − log q)``.

    Args:
        target_logprobs: ``(..., vocab)`` log-probabilities of the reference distribution ``p``.
        logprobs: ``(..., vocab)`` log-probabilities of ``q``.

    Returns:
        ``(...)`` non-negative divergences (the target's entropy is included: this is KL, not CE).
    """
    probs = target_logprobs.exp()
    # 0 * log 0 = 0: where p underflows to 0, its term vanishes even if q is 0 too.
    terms = torch.where(probs > 0, probs * (target_logprobs - logprobs), torch.zeros_like(probs))
    return terms.sum(-1).clamp_min(0.0)


class KLTarget:
    """A target distribution prepared once for :func:`kl_to_target` against many lenses.

    Holds ``p``, ``Σ p log p`` and ``Σ p`` per row, so that each layer's loss costs one
    log-sum-exp and one dot product per row, and its gradient one pass.
    """

    def __init__(self, target_logprobs: torch.Tensor):
        probs = target_logprobs.exp()
        # 0 * log 0 = 0: where p underflows to 0, its term vanishes.
        self.plogp = torch.where(probs > 0, probs * target_logprobs, torch.zeros_like(probs)).sum(
            -1
        )
        self.mass = probs.sum(-1)
        self.probs = probs


class _FusedKL(torch.autograd.Function):
    """KL(p ‖ softmax(logits)) per row, with its gradient ``Σp · softmax(logits) − p`` fused.

    ``logits`` may have leading dimensions more than the target's (several lenses against one
    target): the target broadcasts.
    """

    @staticmethod
    def forward(ctx, logits, probs, plogp, mass):
        logz = torch.logsumexp(logits, dim=-1)
        cross = torch.einsum("...v,...v->...", probs, logits)
        ctx.save_for_backward(logits, logz, probs, mass)
        return plogp - cross + mass * logz

    @staticmethod
    def backward(ctx, grad_output):
        logits, logz, probs, mass = ctx.saved_tensors
        grad = torch.sub(logits, logz.unsqueeze(-1)).exp_()
        grad.mul_(mass.unsqueeze(-1)).sub_(probs).mul_(grad_output.unsqueeze(-1))
        return grad, None, None, None


def kl_to_target(target: KLTarget, logits: torch.Tensor) -> torch.Tensor:
    """KL(target ‖ softmax(logits)) in nats per row, differentiable in ``logits``.

    ``logits`` is ``(..., rows, vocab)`` against a target of ``(rows, vocab)``. Equal to
    ``kl_divergence(target_logprobs, logits.log_softmax(-1))`` up to rounding (without its clamp
    at 0), in fewer passes over the vocabulary, and with one pass for the gradient: the training
    loss.
    """
    return _FusedKL.apply(logits, target.probs, target.plogp, target.mass)
