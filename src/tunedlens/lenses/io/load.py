"""``load_lens``: one resolver for every lens kind and source.

``logit`` names the logit lens. Anything else is a lens location (a local directory or J-lens
``.pt`` file, ``hf:ORG/REPO[/SUBDIR][@REV]``, ``tuned-lens:MODEL_ID[@REV]``, ``jlens:NAME[@REV]``;
see :mod:`tunedlens.lenses.io.locations`) whose files say what kind of lens it holds. A location
is resolved once (:func:`resolve_location`: downloaded if needed, its format detected), then
read by the loader registered for its format (:data:`tunedlens.lenses.io.formats.LOADERS`).
Every ``--lens`` option and the notebook facade go through here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from tunedlens.errors import InputError
from tunedlens.lenses.io.formats import LOADERS, detect_format
from tunedlens.lenses.io.locations import lens_dir
from tunedlens.lenses.lens import Lens, LogitLens

LOGIT = "logit"
"""The location string of the logit lens."""


@dataclass(frozen=True)
class LensLocation:
    """A lens location resolved to local files (downloaded if needed): what :func:`load_lens` reads.

    Resolving is the one step that touches the hub; a command resolves each ``--lens`` once,
    before the model loads, and hands the result to the loaders.
    """

    text: str
    """The location as written (``"logit"``, a path, ``hf:...``, ``tuned-lens:...``, ``jlens:...``)."""
    path: Path | None
    """The local lens directory or J-lens file; ``None`` for the logit lens."""
    format: str | None = None
    """The format of its files (:func:`~tunedlens.lenses.io.formats.detect_format`); ``None``
    for the logit lens, or when not detected yet."""

    @property
    def is_logit(self) -> bool:
        """Whether this is the logit lens (no files)."""
        return self.path is None


def resolve_location(location: str | os.PathLike | LensLocation) -> LensLocation:
    """Resolve ``location`` to local files and detect their format (the lens is not read yet).

    Raises:
        LensFileError: no lens at ``location`` (with what a location looks like).
    """
    if isinstance(location, LensLocation):
        if location.is_logit or location.format is not None:
            return location
        return LensLocation(location.text, location.path, detect_format(location.path))
    if isinstance(location, (str, os.PathLike)) and str(location) == LOGIT:
        return LensLocation(LOGIT, None)
    path = Path(lens_dir(location))
    return LensLocation(str(location), path, detect_format(path))


def load_lens(
    location: str | os.PathLike | LensLocation | Lens,
    model: nn.Module,
    *,
    strict: bool = True,
    **options,
) -> Lens:
    """The lens at ``location`` for ``model``: ``"logit"``, a directory or a hub location.

    Args:
        location: ``"logit"``, a local lens directory (any format) or J-lens file, ``hf:...``,
            ``tuned-lens:...``, ``jlens:...``, a :class:`LensLocation` already resolved, or a
            :class:`Lens` (returned as is).
        model: The model the lens is for.
        strict: Refuse a lens whose unembedding fingerprint differs from the model's.
        **options: Passed to the lens's constructor or loader, e.g. ``final_norm=`` or
            ``skip_norm=True`` (decode with another norm, or none).

    Returns:
        The lens: a :class:`LogitLens`, :class:`TunedLens` or :class:`JacobianLens`.

    Raises:
        LensFileError: nothing usable at ``location``.
        LensMismatch: the lens belongs to another model.
    """
    if isinstance(location, Lens):
        if options:
            raise InputError(f"options {sorted(options)} apply when loading, not to a lens object")
        return location
    resolved = resolve_location(location)
    if resolved.is_logit:
        return LogitLens(model, **options)
    lens = LOADERS[resolved.format](resolved.path, model, strict=strict, **options)
    lens.source = resolved.text
    return lens


def load_lenses(
    locations, model: nn.Module, *, strict: bool = True, reserved=(LOGIT,)
) -> dict[str, Lens]:
    """Each lens location (``logit`` skipped) loaded for ``model``, under a short unique name.

    Names are the locations' last path parts (:func:`lens_name`), never one of ``reserved``.
    Every location is resolved first, so a bad one fails before any lens file is read.
    """
    resolved = [resolve_location(location) for location in locations]
    named: dict[str, Lens] = {}
    for location in resolved:
        if not location.is_logit:
            taken = {*named, *reserved}
            named[lens_name(location.text, taken)] = load_lens(location, model, strict=strict)
    return named


def align_points(
    lenses: dict[str, Lens], model: nn.Module, points: str | None = None
) -> dict[str, Lens]:
    """The lenses with every logit lens reading the points the others read (or ``points``).

    A lens trained on mid points is shown beside the logit lens at those same points; two
    trained lenses reading different points, or ``points`` that a trained lens does not read,
    are refused (their rows would not line up).
    """
    trained = {
        name: lens.points for name, lens in lenses.items() if not isinstance(lens, LogitLens)
    }
    wanted = set(trained.values()) | ({points} if points else set())
    if len(wanted) > 1:
        listed = ", ".join(f"{name} reads {p!r}" for name, p in trained.items())
        asked = f"; --points asks for {points!r}" if points else ""
        raise InputError(
            f"the lenses read different points of the blocks ({listed}{asked}); show lenses of one "
            "kind of point together."
        )
    target = next(iter(wanted), "block")
    return {
        name: lens.at_points(target, model) if isinstance(lens, LogitLens) else lens
        for name, lens in lenses.items()
    }


def lens_name(location: str | os.PathLike | LensLocation, taken) -> str:
    """A short unique name for a lens location (its last path part), e.g. for report columns."""
    text = location.text if isinstance(location, LensLocation) else str(location)
    if text == LOGIT:
        name = LOGIT
    else:
        name = Path(text.split("@")[0].rstrip("/")).name or text
    while name in taken:
        name += "'"
    return name
