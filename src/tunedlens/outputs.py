"""Checks on where a command writes, done before any model is loaded, and safe replacement.

A command that writes checks its ``--out`` first: the right kind (file or directory), a parent
that exists (files) or can be created (directories), permission to write, a place that is safe
to replace, and no results of another run in the way unless ``--force``.

``--force`` replaces only the output of an earlier run of the same command: a directory is
recognised by its files (an :class:`OutputKind`, defined next to each writer). A directory that
is (or holds) the current folder or one of the command's inputs, or that holds anything else, is
refused with or without ``--force``; nothing of the user's is ever deleted. New output is
written beside the target under a temporary name; only once it is complete is the old directory
renamed aside, the new one renamed in, and the old one deleted (a failure puts the old one back).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import BinaryIO

from tunedlens.errors import TunedLensError


class OutputError(TunedLensError):
    """An output path that cannot or must not be written."""


@dataclass(frozen=True)
class OutputKind:
    """The files one kind of command writes into its output directory.

    A directory holding nothing else is an earlier run's output, which ``--force`` may replace;
    anything else in it (the user's files, another command's output) makes it off limits.
    """

    what: str
    """The output, as a message names it: ``"a J-lens"``, ``"an evaluation report"``."""
    files: tuple[str, ...]
    """Files the command writes: names, or glob patterns of numbered ones (``state*.pt``)."""
    folders: tuple[str, ...] = ()
    """Folders the command writes (their contents are its own: e.g. ``tensorboard``)."""

    def owns(self, entry: Path) -> bool:
        """Whether ``entry`` is one of these files or folders, or a temporary file of one.

        :func:`atomic_write` names its temporary files ``.<name>.<random>``; a run killed while
        writing leaves them behind. A symbolic link is never owned (it may lead anywhere).
        """
        if entry.is_symlink():
            return False
        if entry.is_dir():
            return entry.name in self.folders
        return any(
            fnmatchcase(entry.name, pattern) or fnmatchcase(entry.name, f".{pattern}.*")
            for pattern in self.files
        )

    def foreign(self, path: Path) -> list[str]:
        """The entries of the directory ``path`` that are not these (folders end in ``/``)."""
        return sorted(
            entry.name + ("/" if entry.is_dir() else "")
            for entry in path.iterdir()
            if not self.owns(entry)
        )


def _listing(names: Sequence[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )


def local_inputs(*specs: str | os.PathLike | None) -> list[Path]:
    """The specs (model, data, lens, ...) that name files or folders on this machine."""
    return [Path(spec) for spec in specs if spec and Path(spec).exists()]


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
        raise OutputError(
            f"{what} {str(path)!r} is a directory; name a file ending in {path.suffix}."
        )
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{what}: the folder {str(parent)!r} does not exist; create it first.")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{what} {str(path)!r} cannot be written (permission denied).")
    return path


def check_out_place(
    path: str | os.PathLike, *, what: str = "--out", sources: Iterable[str | os.PathLike] = ()
) -> Path:
    """Refuse a directory to write that is the current folder, one of its parents, or an input.

    Paths are compared resolved, so ``.``, ``..``, the absolute path, relative forms and symbolic
    links all count. ``sources`` are the command's inputs that are files or folders here.
    """
    path = Path(path)
    resolved = path.resolve()
    here = Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        where = "the current folder" if resolved == here else "a parent of the current folder"
        raise OutputError(
            f"{what} {str(path)!r} is {where}; an output folder is replaced as a whole, so it "
            f"must not be a folder you are working in. Name a new folder (nothing was written)."
        )
    for source in sources:
        source_path = Path(source).resolve()
        if source_path == resolved or resolved in source_path.parents:
            relation = "is" if source_path == resolved else "holds"
            raise OutputError(
                f"{what} {str(path)!r} {relation} the input {str(source)!r}; writing there would "
                f"replace it. Choose another {what} (nothing was written)."
            )
    return path


def check_out_target(
    path: str | os.PathLike,
    kind: OutputKind,
    *,
    what: str = "--out",
    sources: Iterable[str | os.PathLike] = (),
) -> Path:
    """A directory that holds nothing but an earlier output of ``kind`` (or does not exist yet).

    Also a directory (not a file), writable or creatable, and a safe place
    (:func:`check_out_place`). Whether an earlier output may be replaced is the caller's call.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {str(path)!r} is a file; pass a directory.")
    target = path if path.exists() else _writable_ancestor(path)
    if not os.access(target, os.W_OK):
        raise OutputError(
            f"{what} {str(path)!r} cannot be written (permission denied on {str(target)!r})."
        )
    check_out_place(path, what=what, sources=sources)
    if path.is_dir():
        foreign = kind.foreign(path)
        if foreign:
            raise OutputError(
                f"{what} {str(path)!r} already holds {_listing(foreign)}, which tunedlens did not "
                f"write as {kind.what}; choose another {what} or move them away (--force replaces "
                f"only {kind.what} written earlier, nothing else; nothing was overwritten)."
            )
    return path


def check_out_dir(
    path: str | os.PathLike,
    kind: OutputKind,
    *,
    force: bool = False,
    what: str = "--out",
    sources: Iterable[str | os.PathLike] = (),
) -> Path:
    """A directory to fill: :func:`check_out_target`, and empty unless ``force``."""
    path = check_out_target(path, kind, what=what, sources=sources)
    if path.is_dir() and not force:
        present = sorted(entry.name for entry in path.iterdir())
        if present:
            raise OutputError(
                f"{what} {str(path)!r} already holds {_listing(present)} ({kind.what} from an "
                f"earlier run); choose another {what}, or pass --force to replace it (nothing was "
                "overwritten)."
            )
    return path


def staging_dir(target: Path) -> Path:
    """A fresh temporary directory beside ``target``, to be renamed by :func:`publish_dir`."""
    target = Path(target).resolve()
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


def publish_dir(staging: Path, target: Path, kind: OutputKind) -> None:
    """Move the completed ``staging`` directory to ``target``, replacing an earlier output there.

    The earlier output (checked again: nothing but files of ``kind``) is renamed aside, the new
    one renamed in, and only then is the old one deleted; if the second rename fails, the old
    output is put back. ``target`` is resolved, so a symbolic link keeps pointing at the output.
    """
    usual_modes(staging)
    target = Path(target).resolve()
    if not target.exists():
        os.replace(staging, target)
        return
    if not target.is_dir():
        raise OutputError(f"{str(target)!r} is a file; the output was not written there.")
    foreign = kind.foreign(target)
    if foreign:  # appeared while the command ran: keep its work where the user can find it
        kept = target.with_name(f"{target.name}.new")
        number = 1
        while kept.exists():
            number += 1
            kept = target.with_name(f"{target.name}.new{number}")
        os.replace(staging, kept)
        raise OutputError(
            f"{str(target)!r} now holds {_listing(foreign)}, which tunedlens did not write as "
            f"{kind.what}, so the new output was left in {str(kept)!r} (nothing was overwritten)."
        )
    aside = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, aside)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside, target)
        raise
    try:
        shutil.rmtree(aside)
    except OSError as error:
        raise OutputError(
            f"the new output is in {str(target)!r}, but the earlier one, moved to {str(aside)!r}, "
            f"could not be deleted ({error}); delete it by hand."
        ) from None


@contextmanager
def staged_output(out: Path, kind: OutputKind):
    """Write a directory output through a staging folder beside ``out``, renamed into place.

    ``with staged_output(out, kind) as staging: ...`` writes into ``staging``; on success it
    replaces ``out`` (see :func:`publish_dir`), on failure nothing is changed. The staging folder
    is always removed.
    """
    staging = staging_dir(out)
    try:
        yield staging
        publish_dir(staging, out, kind)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
