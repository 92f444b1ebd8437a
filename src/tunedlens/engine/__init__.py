"""The readout engine, whose function is ``tunedlens.readout``: exact per-cell lens statistics.

One mechanism for every consumer (``predict``, ``show``, trajectories, the notebook facade, the
prompt suite, ``evaluate``, training validation): :func:`readout`. It sits on the numerics floor:
it imports the architecture, lens and metric packages only.
"""

from tunedlens.engine.core import (
    DEFAULT_STATS,
    LensReadout,
    Readout,
    divergences,
    layer_kl,
    name_lenses,
    readout,
)
from tunedlens.engine.inputs import encode_prompt
from tunedlens.engine.stats import STAT_NAMES, STATS, VIEW_STATS, Stat, TrajectoryStat

__all__ = [
    "DEFAULT_STATS",
    "STATS",
    "STAT_NAMES",
    "VIEW_STATS",
    "LensReadout",
    "Readout",
    "Stat",
    "TrajectoryStat",
    "divergences",
    "encode_prompt",
    "layer_kl",
    "name_lenses",
    "readout",
]
