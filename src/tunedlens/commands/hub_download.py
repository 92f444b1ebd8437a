"""``tunedlens hub download``: fetch a collection (or one model's lenses) and verify every file."""

from __future__ import annotations

import os
from pathlib import Path

from tunedlens.hub.publish import download_collection


def run(repo: str, *, model: str | None = None, out: str | os.PathLike | None = None) -> Path:
    """Where the verified files are: the HF cache, or ``out`` when given (copied there)."""
    return download_collection(repo, model=model, out=None if out is None else Path(out))
