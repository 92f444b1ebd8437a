"""A training run's log, ``train_log.jsonl``: its name and how it is read back."""

from __future__ import annotations

import json
from pathlib import Path

from tunedlens.errors import TunedLensError

LOG_NAME = "train_log.jsonl"
"""One JSON record per optimizer step, written by ``tunedlens train`` into its ``--out``."""
CURVES_NAME = "curves.html"
"""A curves page a run's folder may hold (``lens curves RUN --out RUN/curves.html``): ``train
--force`` may replace it with the rest of the run."""


def read_train_log(run: str | Path) -> list[dict]:
    """The records of ``RUN/train_log.jsonl`` (one per optimizer step), checked."""
    run = Path(run)
    path = run / LOG_NAME if run.is_dir() else run
    if not run.exists():
        raise TunedLensError(
            f"the run folder {str(run)!r} does not exist; pass the folder a 'tunedlens train' run "
            f"wrote (its --out), which holds {LOG_NAME}."
        )
    if not path.exists():
        raise TunedLensError(
            f"the run folder {str(run)!r} holds no {LOG_NAME}; pass the folder a 'tunedlens train' "
            "run wrote (its --out), after its first optimizer step."
        )
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise TunedLensError(
                f"{path}: line {number} is not JSON; the log is damaged."
            ) from None
        missing = [key for key in ("step", "tokens", "loss_bits", "lr") if key not in record]
        if missing:
            raise TunedLensError(
                f"{path}: line {number} lacks {', '.join(missing)}; is it a train log?"
            )
        records.append(record)
    if not records:
        raise TunedLensError(f"{path} holds no steps yet; wait for the first optimizer step.")
    return records


__all__ = ["CURVES_NAME", "LOG_NAME", "read_train_log"]
