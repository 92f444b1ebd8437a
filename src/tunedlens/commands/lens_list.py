"""``tunedlens lens list``: the lenses known for a model, with the ``--lens`` location of each."""

from __future__ import annotations

import os
from collections.abc import Sequence

from tunedlens.hub.listing import known_lenses


def run(model: str | None = None, collections: Sequence[str | os.PathLike] = ()) -> list[dict]:
    """The lenses known for ``model`` (all when ``None``), as rows of a table.

    Rows ``{"model", "kind", "location", "source", "local"}``: lenses in the current folder and
    its immediate subfolders, local collections, the reference's published tuned lenses and the
    published J-lenses (:mod:`tunedlens.hub.listing` says what is scanned).
    """
    return known_lenses(model, collections)
