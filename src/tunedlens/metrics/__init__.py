"""Pure tensor functions for comparing distributions, plus exact per-layer evaluation."""

from tunedlens.metrics.divergence import kl_divergence
from tunedlens.metrics.layers import layer_kl

__all__ = ["kl_divergence", "layer_kl"]
