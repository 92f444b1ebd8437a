"""Resumable training checkpoints: translators, optimizer, scheduler, data position, RNG.

Stored with ``torch.save`` but made only of tensors and plain containers, so they are read back
with ``weights_only=True`` (no code is ever unpickled). Written atomically: a kill at any moment
leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from tunedlens.errors import TunedLensError
from tunedlens.metrics.checks import first_nonfinite
from tunedlens.outputs import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1


class CheckpointError(TunedLensError):
    """A checkpoint cannot be resumed (another model, other settings, or damaged)."""


def save_checkpoint(directory: Path, state: dict) -> Path:
    """Atomically write ``state`` to ``directory/checkpoint.pt``."""
    return atomic_write(
        directory / CHECKPOINT_NAME,
        lambda handle: torch.save({"version": CHECKPOINT_VERSION, **state}, handle),
    )


def load_checkpoint(directory: Path) -> dict | None:
    """The checkpoint in ``directory``, or ``None`` if there is none."""
    path = directory / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(
            f"{path} cannot be read ({type(error).__name__}); it is damaged. Delete it to start over."
        ) from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        version = state.get("version") if isinstance(state, dict) else None
        raise CheckpointError(f"{path} has version {version}, expected {CHECKPOINT_VERSION}.")
    for name, tensor in (state.get("translator") or {}).items():
        layer = first_nonfinite(tensor) if isinstance(tensor, torch.Tensor) else None
        if layer is not None:
            raise CheckpointError(
                f"{path}: translator '{name}' holds NaN or Inf (first at layer {layer}); the "
                "run had diverged when it was saved. Delete it and train again."
            )
    return state


def check_resumable(state: dict, *, config: dict, model: dict, data_hash: str, path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``state`` belongs to this exact run."""
    if state["model"] != model:
        raise CheckpointError(
            f"{path} holds a checkpoint for another model ({state['model'].get('base_model_name_or_path')!r}, "
            f"fingerprint {str(state['model'].get('unembed_hash'))[:12]}); this run trains "
            f"{model.get('base_model_name_or_path')!r}. Choose another --out."
        )
    ignored = {"checkpoint_every"}  # how often to save does not change what is computed
    changed = sorted(
        key
        for key in set(config) | set(state["config"])
        if key not in ignored and config.get(key) != state["config"].get(key)
    )
    if changed:
        details = ", ".join(
            f"{k}: {state['config'].get(k)!r} -> {config.get(k)!r}" for k in changed
        )
        raise CheckpointError(
            f"cannot resume {path} with changed settings ({details}). Resume with the original "
            "settings, or start a new run in another --out."
        )
    if state["data_hash"] != data_hash:
        raise CheckpointError(
            f"cannot resume {path}: the training data differs from the checkpoint's (content hash "
            f"{state['data_hash'][:12]} vs {data_hash[:12]})."
        )
