"""``tunedlens hub upload``: verify a collection, upload it in one commit and tag the release."""

from __future__ import annotations

import os
from pathlib import Path

from tunedlens.hub.publish import upload_collection


def run(tree: str | os.PathLike, repo: str, *, revision_tag: str, private: bool = False) -> str:
    """The URL of the uploaded commit of ``tree`` in the hub dataset ``repo``, tagged ``revision_tag``."""
    return upload_collection(Path(tree), repo, revision_tag=revision_tag, private=private)
