"""``load_lens``: one resolver for every lens kind and source.

``logit`` names the logit lens. Anything else is a lens location (a local directory or J-lens
``.pt`` artifact, or
``hf:ORG/REPO[/SUBDIR][@REV]``, ``tuned-lens:MODEL_ID[@REV]``; see
:mod:`tunedlens.lenses.locations`) whose files say what kind of lens it holds. Every ``--lens``
option and the notebook facade go through here, so a new lens kind is taught to all of them by
registering its loader in :data:`LOADERS`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torch import nn

from tunedlens.errors import LensFileError
from tunedlens.lenses.files import detect_format
from tunedlens.lenses.lens import Lens, LogitLens, TunedLens
from tunedlens.lenses.locations import lens_dir

LOGIT = "logit"
"""The location string of the logit lens."""

Loader = Callable[..., Lens]
LOADERS: dict[str, Loader] = {
    "native": TunedLens.load,
    "tuned-lens": TunedLens.load,
}
"""Lens-file format (as :func:`detect_format` names it) -> ``loader(path, model, strict=)``."""


def load_lens(location: str | os.PathLike | Lens, model: nn.Module, *, strict: bool = True,
              **options) -> Lens:  # fmt: skip
    """The lens at ``location`` for ``model``: ``"logit"``, a directory or a hub location.

    Args:
        location: ``"logit"``, a local lens directory (any format), ``hf:...``,
            ``tuned-lens:...``, or a :class:`Lens` (returned as is).
        model: The model the lens is for.
        strict: Refuse a lens whose unembedding fingerprint differs from the model's.
        **options: Passed to the lens's constructor or loader, e.g. ``final_norm=`` or
            ``skip_norm=True`` (decode with another norm, or none).

    Raises:
        LensFileError: nothing usable at ``location``.
        LensMismatch: the lens belongs to another model.
    """
    if isinstance(location, Lens):
        if options:
            raise ValueError(f"options {sorted(options)} apply when loading, not to a lens object")
        return location
    if str(location) == LOGIT:
        return LogitLens(model, **options)
    path = lens_dir(location)
    from tunedlens.lenses.jacobian import JacobianLens, jlens_file

    if jlens_file(Path(path)) is not None:
        lens = JacobianLens.load(path, model, strict=strict, **options)
        lens.source = str(location)
        return lens
    kind = detect_format(Path(path))
    loader = LOADERS.get(kind)
    if loader is None:
        raise LensFileError(f"{location}: lens files of kind {kind!r} have no loader")
    lens = loader(path, model, strict=strict, **options)
    lens.source = str(location)
    return lens


def check_location(location: str | os.PathLike) -> None:
    """Fail now, before any model is loaded, if ``location`` holds no lens (files are read later)."""
    if str(location) != LOGIT:
        from tunedlens.lenses.jlens_files import jlens_file

        path = Path(lens_dir(location))
        if jlens_file(path) is None:
            detect_format(path)


def load_lenses(locations, model: nn.Module, *, strict: bool = True,
                reserved=(LOGIT,)) -> dict[str, Lens]:  # fmt: skip
    """Each lens location (``logit`` skipped) loaded for ``model``, under a short unique name.

    Names are the locations' last path parts (:func:`lens_name`), never one of ``reserved``.
    Every location is resolved first, so a bad one fails before any lens file is read.
    """
    for location in locations:
        check_location(location)
    named: dict[str, Lens] = {}
    for location in locations:
        if str(location) != LOGIT:
            taken = {*named, *reserved}
            named[lens_name(location, taken)] = load_lens(location, model, strict=strict)
    return named


def align_points(lenses: dict[str, Lens], model: nn.Module, points: str | None = None) -> dict[str, Lens]:
    """The lenses with every logit lens reading the points the others read (or ``points``).

    A lens trained on mid points is shown beside the logit lens at those same points; two
    trained lenses reading different points, or ``points`` that a trained lens does not read,
    are refused (their rows would not line up).
    """
    trained = {name: lens.points for name, lens in lenses.items() if not isinstance(lens, LogitLens)}
    wanted = set(trained.values()) | ({points} if points else set())
    if len(wanted) > 1:
        listed = ", ".join(f"{name} reads {p!r}" for name, p in trained.items())
        asked = f"; --points asks for {points!r}" if points else ""
        raise ValueError(
            f"the lenses read different points of the blocks ({listed}{asked}); show lenses of one "
            "kind of point together."
        )
    target = next(iter(wanted), "block")
    return {name: lens.at_points(target, model) if isinstance(lens, LogitLens) else lens
            for name, lens in lenses.items()}  # fmt: skip


def lens_name(location: str | os.PathLike, taken) -> str:
    """A short unique name for a lens location (its last path part), e.g. for report columns."""
    text = str(location)
    if text == LOGIT:
        name = LOGIT
    else:
        name = Path(text.split("@")[0].rstrip("/")).name or text
    while name in taken:
        name += "'"
    return name
