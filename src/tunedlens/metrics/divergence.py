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
