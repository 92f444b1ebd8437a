"""What ``tunedlens lens info`` reports of a lens: plain data, for any lens kind and format."""

from __future__ import annotations

import os

from tunedlens.errors import LensFileError
from tunedlens.lenses.io.formats import DESCRIBERS
from tunedlens.lenses.io.load import LensLocation, resolve_location


def describe_lens(location: str | os.PathLike | LensLocation) -> dict:
    """Format, dimensions, model, provenance and per-layer update sizes of a lens.

    ``location`` is a lens directory, a J-lens file or a hub location
    (:mod:`tunedlens.lenses.io.locations`); ``"path"`` in the result is the location as given.
    What else is reported depends on the format (:data:`tunedlens.lenses.io.formats.DESCRIBERS`).
    """
    resolved = resolve_location(location)
    if resolved.is_logit:
        raise LensFileError(
            "'logit' is the logit lens, which has no files to describe; pass a lens directory, "
            "a J-lens file or a hub location."
        )
    return {**DESCRIBERS[resolved.format](resolved.path), "path": resolved.text}
