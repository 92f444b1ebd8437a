"""``tunedlens lens info``: what a lens is, read from its files (no model needed)."""

from __future__ import annotations

from tunedlens.lenses.io.info import describe_lens


def run(location: str) -> dict:
    """Format, kind, dimensions, model, provenance and per-row update sizes of the lens at ``location``.

    ``location`` is any lens location (a directory, a J-lens file, ``hf:...``, ``jlens:...``).
    """
    return describe_lens(location)
