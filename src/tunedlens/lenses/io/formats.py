"""Lens-file formats: which one a path holds, and what each can do.

Every format has one entry in each registry, keyed by the name :func:`detect_format` gives it:

- :data:`LOADERS`: ``loader(path, model, strict=, **options) -> Lens`` (for :func:`load_lens`);
- :data:`DESCRIBERS`: ``describe(path) -> dict`` (for ``tunedlens lens info``);
- :data:`CONVERTERS`: the formats it converts to, and how (for ``tunedlens lens convert``);
- :data:`PACKAGERS`: ``package(path) -> (index record, files)`` (for ``tunedlens hub package``).

Paths are local (a lens directory or a J-lens ``.pt`` file); hub locations are resolved before
(:func:`tunedlens.lenses.io.load.resolve_location`). Nothing outside these registries asks which
kind of lens a path holds, so a new format is taught to every command by one entry in each.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from tunedlens.lenses.io.files import (
    TUNED_FORMATS,
    convert_tuned,
    describe_tuned,
    package_tuned,
    read_lens,
    tuned_format,
)
from tunedlens.lenses.io.jlens_files import (
    JLENS_FORMATS,
    convert_jlens,
    describe_jlens,
    jlens_format,
    package_jlens,
)
from tunedlens.lenses.jacobian import read_jlens
from tunedlens.lenses.lens import Lens, TunedLens, check_fits
from tunedlens.lenses.unembed import Unembed

FORMATS = (*TUNED_FORMATS, *JLENS_FORMATS)
"""Every format :func:`detect_format` can name."""


def detect_format(path: str | os.PathLike) -> str:
    """Which lens format the local ``path`` holds (one of :data:`FORMATS`).

    A J-lens is looked for first (a directory holding one ``.pt`` file, or ``jlens.safetensors``,
    is a J-lens whatever else it holds); anything else must be a tuned-lens directory.

    Raises:
        LensFileError: nothing at ``path``, or no lens there (saying what a lens looks like), or
            a ``.pt`` file that is no J-lens.
    """
    path = Path(path)
    found = jlens_format(path) if path.exists() else None
    return found or tuned_format(path)


def load_tuned(
    path: Path,
    model: nn.Module,
    *,
    strict: bool = True,
    final_norm: nn.Module | str | None = None,
    skip_norm: bool = False,
) -> TunedLens:
    """The tuned lens in the local directory ``path`` (either format) for ``model``.

    Args:
        path: The lens directory.
        model: The model the lens was trained for.
        strict: Raise when the lens's unembedding fingerprint differs from the model's
            (``False``: warn and continue, e.g. for a quantised copy of the same model).
        final_norm: Override the final norm.
        skip_norm: Decode without the final norm.

    Raises:
        LensFileError: the files are missing, corrupt or not a lens.
        LensMismatch: the lens does not fit ``model``.
    """
    stored = read_lens(path)
    unembed = Unembed(model, final_norm=final_norm, skip_norm=skip_norm)
    check_fits(stored, unembed, model, strict=strict, where=str(path))
    return TunedLens(
        unembed, stored.translator, stored.model_info, stored.provenance, stored.points
    )


Loader = Callable[..., Lens]
LOADERS: dict[str, Loader] = {
    "native": load_tuned,
    "tuned-lens": load_tuned,
    "jlens-native": read_jlens,
    "jlens-artifact": read_jlens,
    "jlens-checkpoint": read_jlens,
}
"""Format -> ``loader(path, model, *, strict=True, **options)``: the lens at a local path."""

DESCRIBERS: dict[str, Callable[[Path], dict]] = {
    "native": describe_tuned,
    "tuned-lens": describe_tuned,
    "jlens-native": describe_jlens,
    "jlens-artifact": describe_jlens,
    "jlens-checkpoint": describe_jlens,
}
"""Format -> ``describe(path) -> dict``: what ``lens info`` reports (plain data)."""


@dataclass(frozen=True)
class Converter:
    """How ``lens convert`` rewrites a lens of one format."""

    targets: tuple[str, ...]
    """The ``--format`` values it writes."""
    convert: Callable[..., Path]
    """``convert(source, target, format, *, force=False) -> the path written``."""


_TUNED_CONVERTER = Converter(TUNED_FORMATS, convert_tuned)
_JLENS_CONVERTER = Converter(("native", "artifact"), convert_jlens)
CONVERTERS: dict[str, Converter] = {
    "native": _TUNED_CONVERTER,
    "tuned-lens": _TUNED_CONVERTER,
    "jlens-native": _JLENS_CONVERTER,
    "jlens-artifact": _JLENS_CONVERTER,
    "jlens-checkpoint": _JLENS_CONVERTER,
}
"""Format -> :class:`Converter`."""

PACKAGERS: dict[str, Callable[[Path], tuple[dict, list[Path]]]] = {
    "native": package_tuned,
    "tuned-lens": package_tuned,
    "jlens-native": package_jlens,
    "jlens-artifact": package_jlens,
    "jlens-checkpoint": package_jlens,
}
"""Format -> ``package(path) -> (record, files)``: what a collection's ``INDEX.json`` records
of the lens (``kind``, ``format``, ``model`` and what else the files say) and the files to copy."""


def convert_lens(
    source: str | os.PathLike, target: str | os.PathLike, format: str, *, force: bool = False
) -> Path:
    """Rewrite the lens at ``source`` as ``format`` at ``target``.

    A tuned lens converts between ``native`` and ``tuned-lens`` (directories), a J-lens
    (artifact, fit checkpoint or native directory) between ``native`` (a directory) and
    ``artifact`` (the published ``.pt`` file); see :data:`CONVERTERS`. A ``target`` that holds
    a lens of the same kind is replaced only with ``force``; anything else there is refused.
    """
    source = Path(source)
    return CONVERTERS[detect_format(source)].convert(source, Path(target), format, force=force)
