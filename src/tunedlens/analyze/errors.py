"""Errors of the analyses: bad arguments, said before any model work."""

from __future__ import annotations

from tunedlens.errors import TunedLensError


class AnalysisError(TunedLensError, ValueError):
    """An analysis was asked for something it cannot do; the message says how to fix it."""
