"""What ``tunedlens lens info`` reports of a lens: plain data, for any lens kind and format."""

from __future__ import annotations

import os

from tunedlens.lenses.io.formats import DESCRIBERS
from tunedlens.lenses.io.load import LensLocation, resolve_location

LOGIT_INFO = {
    "path": "logit",
    "kind": "logit",
    "format": "none (no files: built from the model itself)",
    "translator": "none (identity)",
    "parameters": 0,
    "decodes": "each row's residual state with the model's own final norm and unembedding",
    "trained": "never: it works with every model as it is, the baseline of every comparison",
    "use": "--lens logit (the default of predict; always beside the others in show and eval)",
    "provenance": {},
    "rows": [],
}
"""What ``tunedlens lens info logit`` reports: the logit lens has no files and no rows of its own."""


def describe_lens(location: str | os.PathLike | LensLocation) -> dict:
    """Format, dimensions, model, provenance and per-layer update sizes of a lens.

    ``location`` is a lens directory, a J-lens file or a hub location
    (:mod:`tunedlens.lenses.io.locations`); ``"path"`` in the result is the location as given.
    What else is reported depends on the format (:data:`tunedlens.lenses.io.formats.DESCRIBERS`).
    """
    resolved = resolve_location(location)
    if resolved.is_logit:
        return dict(LOGIT_INFO)
    return {**DESCRIBERS[resolved.format](resolved.path), "path": resolved.text}
