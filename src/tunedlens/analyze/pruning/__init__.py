"""Which decoder blocks can go: cheap scores beside the measured truth, removal curves, healing.

The package is called ``pruning`` (not ``prune``) so that importing it never hides the function
:func:`tunedlens.analyze.prune` behind a module of the same name.

- :mod:`~tunedlens.analyze.pruning.core`: :func:`prune` and :class:`PruneReport`;
- :mod:`~tunedlens.analyze.pruning.checks`: :func:`check_prune_args`, before any model work;
- :mod:`~tunedlens.analyze.pruning.scores`: block influence, angular distances, lens KL, Spearman;
- :mod:`~tunedlens.analyze.pruning.measure`: effects on test data through the readout engine;
- :mod:`~tunedlens.analyze.pruning.heal`: the affine heal in front of the head;
- :mod:`~tunedlens.analyze.pruning.report`: ``prune.json``, CSV sidecars, summary and figures.

Running a model without some blocks is :mod:`tunedlens.analyze.removal`.
"""

from tunedlens.analyze.pruning.checks import check_prune_args, method_names
from tunedlens.analyze.pruning.core import PruneReport, prune
from tunedlens.analyze.pruning.heal import HealConfig

__all__ = ["HealConfig", "PruneReport", "check_prune_args", "method_names", "prune"]
