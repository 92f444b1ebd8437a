"""tunedlens: the logit lens and the tuned lens for Hugging Face causal LMs.

Importing the package does no work: names are loaded on first use.

    >>> from tunedlens import load_model, LogitLens, TunedLens  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "tunedlens.models",
    "LogitLens": "tunedlens.lenses.lens",
    "TunedLens": "tunedlens.lenses.lens",
    "Lens": "tunedlens.lenses.lens",
    "Unembed": "tunedlens.lenses.unembed",
    "ArchSpec": "tunedlens.arch.registry",
    "register_arch": "tunedlens.arch.registry",
    "resolve_arch": "tunedlens.arch.resolve",
    "collect_residuals": "tunedlens.arch.residuals",
    "predict_layers": "tunedlens.predict",
    "evaluate": "tunedlens.evaluation.core",
    "Lensed": "tunedlens.view.notebook",
    "JacobianLens": "tunedlens.lenses.jacobian",
    "train_lens": "tunedlens.train.loop",
    "TrainConfig": "tunedlens.train.config",
    "recipe_config": "tunedlens.train.config",
    "fit_jacobian_lens": "tunedlens.jacobian.fit",
    "merge_jacobian_lenses": "tunedlens.jacobian.fit",
    "load_lens": "tunedlens.lenses.io.load",
    "readout": "tunedlens.engine.core",
    "Readout": "tunedlens.engine.core",
    "divergences": "tunedlens.engine.core",
    "STATS": "tunedlens.engine.stats",
    "PredictionTrajectory": "tunedlens.view.trajectory",
    "invert_unembed": "tunedlens.analyze.inversion",
    "load_prompts": "tunedlens.evaluation.prompts",
    "TunedLensError": "tunedlens.errors",
    "ArchitectureNotFound": "tunedlens.errors",
    "LensFileError": "tunedlens.errors",
    "LensMismatch": "tunedlens.errors",
    "ModelLoadError": "tunedlens.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from tunedlens.analyze.inversion import invert_unembed
    from tunedlens.arch.registry import ArchSpec, register_arch
    from tunedlens.arch.residuals import collect_residuals
    from tunedlens.arch.resolve import resolve_arch
    from tunedlens.engine.core import Readout, divergences, readout
    from tunedlens.engine.stats import STATS
    from tunedlens.errors import (
        ArchitectureNotFound,
        LensFileError,
        LensMismatch,
        ModelLoadError,
        TunedLensError,
    )
    from tunedlens.evaluation.core import evaluate
    from tunedlens.evaluation.prompts import load_prompts
    from tunedlens.jacobian.fit import fit_jacobian_lens, merge_jacobian_lenses
    from tunedlens.lenses.io.load import load_lens
    from tunedlens.lenses.jacobian import JacobianLens
    from tunedlens.lenses.lens import Lens, LogitLens, TunedLens
    from tunedlens.lenses.unembed import Unembed
    from tunedlens.models import load_model
    from tunedlens.predict import predict_layers
    from tunedlens.train.config import TrainConfig, recipe_config
    from tunedlens.train.loop import train_lens
    from tunedlens.view.notebook import Lensed
    from tunedlens.view.trajectory import PredictionTrajectory


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tunedlens' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy exports are no module attributes until first used: dir() and tab-completion list
    # them, and not the helpers this module imports for itself.
    return sorted({*__all__, "__version__", *(name for name in globals() if name.startswith("__"))})
