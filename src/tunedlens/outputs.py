"""Checks on where a command writes, done before any model is loaded, and safe replacement.

A command that writes checks its ``--out`` first: the right kind (file or directory), a parent
that exists (files) or can be created (directories), permission to write, and no results of
another run in the way unless ``--force``. Directories are written under a temporary name and
renamed when complete, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from tunedlens.errors import TunedLensError


class OutputError(TunedLensError):
    """An output path that cannot or must not be written."""


def _writable_ancestor(path: Path) -> Path:
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    return ancestor


def check_out_file(path: str | os.PathLike, suffixes: Sequence[str], what: str = "--out") -> Path:
    """A file to write (a figure): suffix, not a directory, existing writable parent folder."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise OutputError(f"{what} must end in {' or '.join(suffixes)}, got {path.name!r}")
    if path.is_dir():
        raise OutputError(f"{what} {str(path)!r} is a directory; name a file ending in {path.suffix}.")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{what}: the folder {str(parent)!r} does not exist; create it first.")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{what} {str(path)!r} cannot be written (permission denied).")
    return path


def check_out_dir(path: str | os.PathLike, *, force: bool = False, what: str = "--out",
                  allowed: Sequence[str] = ()) -> Path:  # fmt: skip
    """A directory to fill: not a file, creatable and writable, empty unless ``force``.

    ``allowed`` names files that may already be there (e.g. a checkpoint being resumed).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {str(path)!r} is a file; pass a directory.")
    target = path if path.exists() else _writable_ancestor(path)
    if not os.access(target, os.W_OK):
        raise OutputError(f"{what} {str(path)!r} cannot be written (permission denied on {str(target)!r}).")
    if path.is_dir() and not force:
        present = sorted(p.name for p in path.iterdir() if p.name not in allowed)
        if present:
            raise OutputError(
                f"{what} {str(path)!r} already holds {', '.join(present[:4])}"
                f"{' ...' if len(present) > 4 else ''} from another run; choose another {what}, or "
                "pass --force to replace it (nothing was overwritten)."
            )
    return path


def staging_dir(target: Path) -> Path:
    """A fresh temporary directory beside ``target``, to be renamed by :func:`publish_dir`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))


def usual_modes(path: Path) -> None:
    """Give ``path`` (a file, or a directory and everything in it) the modes the umask allows.

    Temporary files and directories (``mkstemp``, ``mkdtemp``) and safetensors' writer create
    owner-only modes; published outputs should be as readable as any file the user writes.
    """
    mask = os.umask(0)
    os.umask(mask)
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def atomic_write(target: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``target`` through ``write(handle)`` into a temporary file, then rename it.

    A kill at any moment leaves the previous file or the new one, never half of one; the new
    file gets the modes the umask allows (``mkstemp`` creates owner-only files).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        usual_modes(Path(temporary))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def publish_dir(staging: Path, target: Path) -> None:
    """Move a completed ``staging`` directory to ``target``, replacing what was there."""
    usual_modes(staging)
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    os.replace(staging, target)
