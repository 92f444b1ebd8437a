"""Pure tensor functions for comparing distributions (no model, no lens)."""

from tunedlens.metrics.checks import first_nonfinite
from tunedlens.metrics.divergence import NATS_TO_BITS, kl_divergence

__all__ = ["NATS_TO_BITS", "first_nonfinite", "kl_divergence"]
