"""The running sums of a J-lens fit: checkpoints, resume, and merging fits of prompt slices.

A fit's state is one float64 ``(d, d)`` sum per row plus counts. It is saved as a single
safetensors file (the counts and the fit's settings in its metadata), written atomically, so a
kill at any moment leaves the previous state or the new one, and nothing is ever unpickled.
Adding the same matrices to the same float64 sums in the same order is deterministic, so a
resumed fit is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tunedlens.errors import TunedLensError
from tunedlens.metrics.checks import first_nonfinite
from tunedlens.outputs import atomic_write

STATE_NAME = "jlens_fit_state"
STATE_VERSION = 1
RESULT_SETTINGS = (
    "skip_first",
    "rows",
    "dim_batch",
    "dtype",
    "unembed_hash",
    "prompts_hash",
    "n_prompts",
    "rank",
    "world_size",
)
"""Settings a resumed fit must share with its checkpoint (all change what is computed)."""
SOURCE_SETTINGS = {"data": "--data", "seq_len": "--seq-len", "seed": "--seed"}
"""Where the prompts came from (key -> fit-jlens option), when the fit was given them.

They fix the prompts, so ``prompts_hash`` differs whenever one does; a resume names them instead.
``data`` alone refuses nothing: the same text may be named by another path (a resume from
another folder), so it is named only beside other prompts. Checkpoints written before these
were recorded are compared on the prompts alone.
"""


class FitStateError(TunedLensError):
    """A J-lens fit checkpoint cannot be resumed (other settings, other prompts, or damaged)."""


def prompts_hash(prompts: list[torch.Tensor]) -> str:
    """sha256 of the prompts' token ids and lengths (what "the same prompts" means)."""
    digest = hashlib.sha256()
    for ids in prompts:
        digest.update(len(ids).to_bytes(8, "little"))
        digest.update(ids.to(torch.int64).cpu().numpy().tobytes())
    return digest.hexdigest()


def state_file(directory: Path, rank: int = 0, world_size: int = 1) -> Path:
    """The checkpoint of process ``rank`` (one file per process under ``torchrun``)."""
    suffix = f".rank{rank}" if world_size > 1 else ""
    return Path(directory) / f"{STATE_NAME}{suffix}.safetensors"


@dataclass
class FitState:
    """Sums of per-prompt Jacobians by our row, and how far the fit has come.

    Attributes:
        totals: Row -> float64 sum of the prompts' ``(d, d)`` matrices.
        settings: What the fit computes (:data:`RESULT_SETTINGS`); a resume must match them.
        n_done: Prompts summed.
        next_index: Prompts consumed (summed or skipped as too short), i.e. where to continue.
        skipped: Prompts too short to have a valid source position.
    """

    totals: dict[int, torch.Tensor]
    settings: dict
    n_done: int = 0
    next_index: int = 0
    skipped: int = 0

    @classmethod
    def empty(cls, rows: list[int], d_model: int, settings: dict) -> FitState:
        """A fit of ``rows`` that has summed nothing yet."""
        totals = {row: torch.zeros(d_model, d_model, dtype=torch.float64) for row in rows}
        return cls(totals, settings)

    def add(self, matrices: dict[int, torch.Tensor]) -> None:
        """Add one prompt's matrices."""
        for row, matrix in matrices.items():
            self.totals[row] += matrix
        self.n_done += 1
        self.next_index += 1

    def skip(self) -> None:
        """Count one prompt too short to use."""
        self.skipped += 1
        self.next_index += 1

    def means(self) -> dict[int, torch.Tensor]:
        """The fitted matrices (float32): sums over prompts divided by the count."""
        if self.n_done == 0:
            raise FitStateError("no prompt has been summed yet, so there is no J-lens to write.")
        return {row: (total / self.n_done).float() for row, total in self.totals.items()}

    def save(self, path: Path) -> Path:
        """Atomically write the state to ``path`` (a ``.safetensors`` file)."""
        from safetensors.torch import save

        header = {
            "version": STATE_VERSION,
            "settings": self.settings,
            "n_done": self.n_done,
            "next_index": self.next_index,
            "skipped": self.skipped,
        }
        tensors = {f"row.{row}": total.contiguous() for row, total in self.totals.items()}
        payload = save(tensors, metadata={"state": json.dumps(header)})
        return atomic_write(path, lambda handle: handle.write(payload))

    @classmethod
    def load(cls, path: Path) -> FitState:
        """Read a state written by :meth:`save`; damaged or NaN-holding files are refused."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                header = json.loads((handle.metadata() or {})["state"])
                totals = {
                    int(name.split(".")[1]): handle.get_tensor(name) for name in handle.keys()
                }
        except (OSError, SafetensorError, KeyError, ValueError) as error:
            raise FitStateError(
                f"{path} cannot be read as a J-lens fit checkpoint ({type(error).__name__}); it is "
                "damaged. Delete it to start the fit over."
            ) from None
        if header.get("version") != STATE_VERSION:
            raise FitStateError(
                f"{path} has version {header.get('version')}, expected {STATE_VERSION}."
            )
        for row, total in totals.items():
            if first_nonfinite(total) is not None:
                raise FitStateError(
                    f"{path}: the sum of row {row} holds NaN or Inf. Delete it and fit again."
                )
        return cls(
            totals,
            header["settings"],
            int(header["n_done"]),
            int(header["next_index"]),
            int(header["skipped"]),
        )

    def check_resumable(self, settings: dict, path: Path) -> None:
        """Raise :class:`FitStateError` unless this state belongs to a fit with ``settings``.

        Only the keys in ``settings`` are compared (a command checks what its arguments show
        before the model loads, the rest after); :data:`SOURCE_SETTINGS` only where the
        checkpoint records them (older ones do not).
        """
        changed = [
            key
            for key in (*SOURCE_SETTINGS, *RESULT_SETTINGS)
            if key in settings
            and (key in self.settings or key in RESULT_SETTINGS)
            and self.settings.get(key) != settings[key]
        ]
        if "data" in changed and "prompts_hash" not in changed:
            changed.remove("data")  # the same prompts: the text is only named another way
        if "prompts_hash" in changed and {*SOURCE_SETTINGS, "n_prompts"} & set(changed):
            changed.remove("prompts_hash")  # other prompts follow from the setting named
        if changed:
            details = "; ".join(
                f"{key}{f' ({SOURCE_SETTINGS[key]})' if key in SOURCE_SETTINGS else ''}: "
                f"{_short(self.settings.get(key))} -> {_short(settings.get(key))}"
                for key in changed
            )
            raise FitStateError(
                f"cannot resume {path}: this fit differs from the checkpoint's ({details}). Resume "
                "with the original model, prompts and settings, or start a new fit in another --out."
            )


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
