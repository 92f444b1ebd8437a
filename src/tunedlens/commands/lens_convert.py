"""``tunedlens lens convert``: rewrite a lens in another file format."""

from __future__ import annotations

import os
from pathlib import Path

from tunedlens.lenses.io.formats import convert_lens


def run(
    source: str | os.PathLike,
    target: str | os.PathLike,
    format: str = "native",
    *,
    force: bool = False,
) -> Path:
    """Convert the lens at ``source`` into ``format`` at ``target``; returns what was written.

    Tuned lenses: ``native`` <-> ``tuned-lens`` (the reference's format); J-lenses: ``native``
    <-> ``artifact`` (the published ``.pt``). ``target`` is replaced only with ``force``, and
    only if it holds an earlier lens of the same kind.
    """
    return convert_lens(Path(source), Path(target), format, force=force)  # type: ignore[arg-type]
