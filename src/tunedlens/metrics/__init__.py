"""Pure tensor functions for comparing distributions (no model, no lens)."""

from tunedlens.metrics.divergence import NATS_TO_BITS, kl_divergence

__all__ = ["NATS_TO_BITS", "kl_divergence"]
