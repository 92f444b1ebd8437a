"""Lenses: the model's head (:class:`Unembed`), the logit, tuned and Jacobian lenses.

The lens model lives here; lens files, locations and the one loader (:func:`load_lens`) in
:mod:`tunedlens.lenses.io`.
"""

from tunedlens.lenses.io.files import LensFile, read_lens, write_lens
from tunedlens.lenses.io.load import LOGIT, load_lens
from tunedlens.lenses.jacobian import JacobianLens
from tunedlens.lenses.lens import Lens, LogitLens, TunedLens
from tunedlens.lenses.translators import (
    AffineTranslator,
    DiagonalTranslator,
    LowRankTranslator,
    MLPTranslator,
    default_rank,
)
from tunedlens.lenses.unembed import Unembed, unembed_hash

__all__ = [
    "LOGIT",
    "AffineTranslator",
    "DiagonalTranslator",
    "JacobianLens",
    "Lens",
    "LensFile",
    "LogitLens",
    "LowRankTranslator",
    "MLPTranslator",
    "TunedLens",
    "Unembed",
    "default_rank",
    "load_lens",
    "read_lens",
    "unembed_hash",
    "write_lens",
]
