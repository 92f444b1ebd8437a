"""The start-up every command shares: lens locations resolved once, the model, its lenses.

A command checks its own arguments first (they need no model), then calls
:func:`open_model_and_lenses`, which resolves each lens location to local files (downloading
if needed) *before* the model loads, so a bad location costs no model load, and hands the
resolved locations to the loaders. :func:`check_resume` is the one check of ``--out`` for
commands that can resume (``train``, ``fit-jlens``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

import tunedlens.models as models
from tunedlens.arch.points import check_points
from tunedlens.errors import TunedLensError
from tunedlens.lenses.io.load import (
    LOGIT,
    LensLocation,
    align_points,
    load_lenses,
    resolve_location,
)
from tunedlens.lenses.lens import Lens, LogitLens
from tunedlens.outputs import OutputKind, check_out_dir, check_out_target


@dataclass(frozen=True)
class Opened:
    """A loaded model, its tokenizer and the lenses a command reads it through."""

    model: nn.Module
    tokenizer: object
    lenses: dict[str, Lens]
    """Name -> lens; ``"logit"`` first when the command shows the logit lens."""


def resolve_locations(locations: Sequence[str | os.PathLike]) -> list[LensLocation]:
    """Each lens location resolved to local files (the one resolution per command)."""
    return [resolve_location(location) for location in locations]


def open_model_and_lenses(
    model_spec: str,
    locations: Sequence[str | os.PathLike | LensLocation] = (),
    *,
    dtype: str = "float32",
    device: str | None = None,
    tokenizer: str | None = None,
    strict: bool = True,
    points: str | None = None,
    with_logit: bool = True,
    reserved: Sequence[str] = (LOGIT,),
    needs_tokenizer: bool = True,
) -> Opened:
    """Resolve the lens locations, then load the model, check its tokenizer and load the lenses.

    Args:
        model_spec: Anything :func:`tunedlens.load_model` accepts.
        locations: Lens locations (``logit`` entries are skipped: see ``with_logit``).
        dtype: Model dtype.
        device: Where to run the model.
        tokenizer: A tokenizer hub id or directory to use instead of the model's own files.
        strict: Refuse a lens whose unembedding fingerprint differs from the model's.
        points: Where logit lenses read (``block``, ``mid``, ``both``); default: the points the
            other lenses read.
        with_logit: Put the logit lens first, named ``logit``.
        reserved: Names the loaded lenses must not take (e.g. a report's baseline column).
        needs_tokenizer: Refuse a model without a tokenizer (the command turns text into tokens).

    Returns:
        The model, tokenizer and lenses, every logit lens reading the others' points.
    """
    if points is not None:
        check_points(points)
    resolved = resolve_locations(locations)
    model, loaded_tokenizer = models.load_model(
        model_spec, dtype=dtype, device=device, tokenizer=tokenizer
    )
    if needs_tokenizer:
        models.need_tokenizer(loaded_tokenizer, model_spec)
    named: dict[str, Lens] = {LOGIT: LogitLens(model)} if with_logit else {}
    named.update(load_lenses(resolved, model, strict=strict, reserved=reserved))
    return Opened(model, loaded_tokenizer, align_points(named, model, points))


def check_resume(
    out: Path,
    kind: OutputKind,
    *,
    checkpoints: str,
    resume: bool,
    force: bool,
    checkpoint_every: int | None,
    sources: Sequence[Path] = (),
    what: str = "run",
    checkpoint_name: str = "checkpoint",
) -> list[str]:
    """Check ``--out`` of a resumable command; return the names of the checkpoints it holds.

    Args:
        out: The command's ``--out`` directory.
        kind: What the command writes there (what ``--force`` may replace).
        checkpoints: Glob of its checkpoint files in ``out``.
        resume: ``--resume``: continue from a checkpoint in ``out``.
        force: ``--force``: replace an earlier output of the same kind.
        checkpoint_every: ``--checkpoint-every`` (a resumed run needs the same setting).
        sources: The command's inputs on this machine (never replaced).
        what: What is resumed, as messages name it (``run``, ``fit``).
        checkpoint_name: What its checkpoint is called in messages.

    Raises:
        TunedLensError: ``--resume`` with ``--force``, without a checkpoint or without
            ``--checkpoint-every``; a checkpoint left without ``--resume``; an ``--out`` that
            holds something else (see :func:`tunedlens.outputs.check_out_target`).
    """
    if resume and force:
        raise TunedLensError(
            f"--resume continues the {what} in --out and --force replaces it; pick one."
        )
    check_out_target(out, kind, sources=sources)
    kept = sorted(path.name for path in out.glob(checkpoints)) if out.is_dir() else []
    if resume:
        if not kept:
            raise TunedLensError(
                f"--resume: {out} holds no {checkpoint_name} ({checkpoints}) to continue. Start "
                f"without --resume, or pass the --out of a {what} made with --checkpoint-every."
            )
        if checkpoint_every is None:
            raise TunedLensError(
                f"--resume needs --checkpoint-every N, as given to the {what} being resumed (its "
                "checkpoint records the setting, and a different one is refused)."
            )
        return kept
    if kept and not force:
        raise TunedLensError(
            f"{out} holds the checkpoint of an unfinished {what} ({kept[0]}). Pass --resume to "
            "continue it, --force to start over (it is replaced once the new one is done), or "
            "choose another --out (nothing was overwritten)."
        )
    check_out_dir(out, kind, force=force, sources=sources)
    return kept
