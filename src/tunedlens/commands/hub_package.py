"""``tunedlens hub package``: build a lens collection tree with checksums and a dataset card."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tunedlens.errors import InputError
from tunedlens.hub.collection import package_lenses


def parse_evals(items: Sequence[str]) -> dict[str, str]:
    """``["NAME=DIR", ...]`` -> ``{NAME: DIR}`` (the ``--eval`` options)."""
    evals = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not (sep and name and folder):
            raise InputError(f"--eval must be NAME=DIR, got {item!r}")
        evals[name] = folder
    return evals


def run(
    lenses: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    evals: Sequence[str] = (),
    update: bool = False,
    license: str = "apache-2.0",
) -> Path:
    """Package ``lenses`` into the collection tree ``out`` (``update``: add to a tree made earlier).

    ``evals`` are ``NAME=DIR`` items attaching the evaluation report in ``DIR`` to lens ``NAME``.
    """
    attached = parse_evals(evals)
    return package_lenses(
        [Path(lens) for lens in lenses], Path(out), evals=attached, update=update, license=license
    )
