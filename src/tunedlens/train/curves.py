"""``tunedlens lens curves OUT``: draw a training run's curves from its ``train_log.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from tunedlens.errors import TunedLensError
from tunedlens.outputs import check_out_file
from tunedlens.train.run import CURVES_NAME, LOG_NAME

CURVE_SUFFIXES = (".html", ".png")


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
            raise TunedLensError(f"{path}: line {number} is not JSON; the log is damaged.") from None
        missing = [key for key in ("step", "tokens", "loss_bits", "lr") if key not in record]
        if missing:
            raise TunedLensError(f"{path}: line {number} lacks {', '.join(missing)}; is it a train log?")
        records.append(record)
    if not records:
        raise TunedLensError(f"{path} holds no steps yet; wait for the first optimizer step.")
    return records


def run_curves(run: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``run``'s loss, learning rate and per-layer validation KL into ``out``.

    ``out`` defaults to ``RUN/curves.html``; rows are labelled by the lens's points once the lens
    is saved.
    """
    from tunedlens.plot.training_figures import save_training_curves

    run = Path(run)
    records = read_train_log(run)  # first: a wrong RUN is the likelier mistake than a wrong --out
    target = check_out_file(out if out is not None else run / CURVES_NAME, CURVE_SUFFIXES)
    labels = None
    if (run / "config.json").exists():
        from tunedlens.arch.points import row_label
        from tunedlens.lenses.io.files import read_lens

        stored = read_lens(run)
        count = stored.translator.n_layers
        labels = [row_label(stored.points, row, count) for row in range(count)]
    return save_training_curves(records, target, title=f"training: {run.name}", row_labels=labels)


__all__ = ["read_train_log", "run_curves"]
