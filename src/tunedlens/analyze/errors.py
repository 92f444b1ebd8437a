"""The error every analysis raises for bad arguments, before any model work."""

from __future__ import annotations

from tunedlens.errors import TunedLensError


class AnalysisError(TunedLensError, ValueError):
    """An analysis (early exit, pruning, detection) was given arguments it cannot use."""


__all__ = ["AnalysisError"]
