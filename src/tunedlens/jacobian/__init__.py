"""Fitting Jacobian lenses: the exact estimator, resumable fit state, merging fits of parts.

:mod:`~tunedlens.jacobian.fit` (:func:`fit_jacobian_lens`, :func:`merge_jacobian_lenses`),
:mod:`~tunedlens.jacobian.state` (the running sums a fit checkpoints) and
:mod:`~tunedlens.jacobian.merge` (which parts may be merged, and the merged provenance). The lens
itself, and its files, are :mod:`tunedlens.lenses.jacobian` and :mod:`tunedlens.lenses.io`.
"""
