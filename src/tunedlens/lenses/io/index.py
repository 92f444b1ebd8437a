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
HEX = frozenset("0123456789abcdef")


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
        raise CollectionError(
            f"{tree} is not a lens collection: cannot read {INDEX_NAME} ({error})."
        ) from None
    if (
        not isinstance(index, dict)
        or index.get("schema") != INDEX_SCHEMA
        or not isinstance(index.get("lenses"), dict)
    ):
        raise CollectionError(
            f"{Path(tree) / INDEX_NAME} is not a tunedlens collection index ({INDEX_SCHEMA})."
        )
    for rel, entry in index["lenses"].items():
        _check_entry(Path(tree) / INDEX_NAME, rel, entry)
    return index


def _check_entry(path: Path, rel: str, entry) -> None:
    """Refuse an index entry whose fields have the wrong type, naming the entry and the field.

    Everything that reads an index (verify, download, ``lens list``, hub locations) relies on
    these types; a damaged or hand-edited index fails here instead of deep inside a comparison.
    """

    def malformed(field: str, want: str, value) -> CollectionError:
        return CollectionError(
            f"{path}: entry {rel!r}: {field} must be {want}, got {value!r} ({type(value).__name__}); "
            "the index is damaged: package the collection again or download it again."
        )

    if not isinstance(entry, dict):
        raise malformed("the entry", "an object with model, kind and files", entry)
    for field in ("model", "kind"):
        if not isinstance(entry.get(field), str) or not entry[field]:
            raise malformed(f"field {field!r}", "a non-empty string", entry.get(field))
    files = entry.get("files")
    if not isinstance(files, dict):
        raise malformed("field 'files'", "an object of file name -> {sha256, size}", files)
    for name, spec in files.items():
        parts = name.replace("\\", "/").split("/")
        if not name or name.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise malformed(
                f"file name {name!r} in 'files'", "a relative path inside the lens folder", name
            )
        if not isinstance(spec, dict):
            raise malformed(f"files[{name!r}]", "an object with sha256 and size", spec)
        digest, size = spec.get("sha256"), spec.get("size")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in HEX for c in digest)):
            raise malformed(
                f"files[{name!r}].sha256", "a sha256 hex digest (64 characters 0-9a-f)", digest
            )
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise malformed(f"files[{name!r}].size", "a whole number of bytes", size)
    metrics = entry.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict):
            raise malformed("field 'metrics'", "an object", metrics)
        kl = metrics.get("mean_kl_bits")
        if kl is not None and (isinstance(kl, bool) or not isinstance(kl, (int, float))):
            raise malformed("metrics.mean_kl_bits", "a number of bits", kl)
        if not isinstance(metrics.get("gates", {}), dict):
            raise malformed("metrics.gates", "an object of gate -> pass", metrics.get("gates"))


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
            raise CollectionError(
                f"{rel}/{name} has {path.stat().st_size} bytes; {INDEX_NAME} says {expected['size']}."
            )
        if sha256_file(path) != expected["sha256"]:
            raise CollectionError(
                f"{rel}/{name} does not match its sha256 in {INDEX_NAME}: it was changed or corrupted."
            )
    return checked
