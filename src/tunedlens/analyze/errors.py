"""Errors of the analyses: bad arguments, refused before any model work."""

from __future__ import annotations

from tunedlens.errors import TunedLensError


class AnalysisError(TunedLensError, ValueError):
    """An analysis cannot run with these arguments; the message says what to change."""


__all__ = ["AnalysisError"]
