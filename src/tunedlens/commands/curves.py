"""``tunedlens lens curves RUN``: draw a training run's curves from its ``train_log.jsonl``."""

from __future__ import annotations

from pathlib import Path

from tunedlens.outputs import check_out_file
from tunedlens.train.curves import CURVES_NAME, read_train_log

CURVE_SUFFIXES = (".html", ".png")


def run(run: str | Path, out: str | Path | None = None) -> Path:
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
        rows = range(stored.translator.n_rows)
        labels = [row_label(stored.points, row, stored.n_blocks) for row in rows]
    return save_training_curves(records, target, title=f"training: {run.name}", row_labels=labels)
