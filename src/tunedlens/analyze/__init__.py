"""Uses of lenses: early exit, which blocks can go, and anomalous inputs.

Each analysis is one function that takes objects (a model, lenses, token ids) and returns a
report with ``to_dict()`` and ``save(out)`` (JSON, CSV sidecars, PNG and offline HTML figures),
as :func:`tunedlens.evaluate` does:

- :func:`early_exit` -> :class:`EarlyExitReport` (``tunedlens analyze early-exit``);
- :func:`prune` -> :class:`PruneReport` (``tunedlens analyze prune``);
- :func:`detect` -> :class:`DetectReport` (``tunedlens analyze detect``).

Importing the package does no work: names load on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # Modules named after the functions would replace them on this package: the analyses live
    # in modules and packages with other names.
    "early_exit": "tunedlens.analyze.exit_analysis",
    "EarlyExitReport": "tunedlens.analyze.exit_analysis",
    "generate_with_exit": "tunedlens.analyze.exit_generate",
    "prune": "tunedlens.analyze.pruning",
    "PruneReport": "tunedlens.analyze.pruning",
    "detect": "tunedlens.analyze.detection",
    "DetectReport": "tunedlens.analyze.detection",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tunedlens.analyze' has no attribute {name!r}")
