"""The ``INDEX.json`` of a lens collection: reading it and checking a lens's files against it.

Low in the package so that hub locations (``hf:datasets/...``) can verify a downloaded lens
before it is used; building and publishing collections is :mod:`tunedlens.hub`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunedlens.errors import LensFileError

INDEX_NAME = "INDEX.json"
INDEX_SCHEMA = "tunedlens-collection/1"
LENSES_DIR = "lenses"


class CollectionError(LensFileError):
    """A lens collection is inconsistent (checksums, files, index) or cannot be built."""


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_index(tree: Path) -> dict:
    """The ``INDEX.json`` of a collection tree."""
    try:
        index = json.loads((Path(tree) / INDEX_NAME).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CollectionError(f"{tree} is not a lens collection: cannot read {INDEX_NAME} ({error}).") from None
    if not isinstance(index, dict) or index.get("schema") != INDEX_SCHEMA or not isinstance(index.get("lenses"), dict):
        raise CollectionError(f"{Path(tree) / INDEX_NAME} is not a tunedlens collection index ({INDEX_SCHEMA}).")
    return index


def check_lens_files(tree: Path, rel: str, entry: dict) -> set[str]:
    """Check lens ``rel``'s files (presence, size, sha256) against its index ``entry``.

    Returns the tree-relative paths checked. Raises :class:`CollectionError` naming the file.
    """
    parts = rel.split("/")
    if parts[0] != LENSES_DIR or "/".join(parts[1:-1]) != entry.get("model"):
        raise CollectionError(
            f"{rel}: filed under {'/'.join(parts[1:-1])!r} but the index says its model is "
            f"{entry.get('model')!r}."
        )
    checked = set()
    for name, expected in sorted(entry.get("files", {}).items()):
        path = Path(tree) / rel / name
        checked.add(f"{rel}/{name}")
        if not path.is_file():
            raise CollectionError(f"{rel}/{name} is listed in {INDEX_NAME} but missing.")
        if path.stat().st_size != expected["size"]:
            raise CollectionError(f"{rel}/{name} has {path.stat().st_size} bytes; {INDEX_NAME} says {expected['size']}.")
        if sha256_file(path) != expected["sha256"]:
            raise CollectionError(f"{rel}/{name} does not match its sha256 in {INDEX_NAME}: it was changed or corrupted.")
    return checked
