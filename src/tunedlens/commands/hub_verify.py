"""``tunedlens hub verify``: check a collection's files against its INDEX.json and load each lens."""

from __future__ import annotations

import os
from pathlib import Path

from tunedlens.hub.collection import verify_collection


def run(tree: str | os.PathLike) -> dict:
    """The collection's index, once every file matches it (missing, extra, size, sha256)."""
    return verify_collection(Path(tree))
