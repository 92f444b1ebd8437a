"""``tunedlens lens curves RUN``: draw a training run's curves from its ``train_log.jsonl``."""

from __future__ import annotations

from pathlib import Path

from tunedlens.outputs import check_out_file
from tunedlens.plot.html import DEFAULT_PLOTLY, check_plotly_mode
from tunedlens.train.curves import read_train_log

CURVE_SUFFIXES = (".html", ".png")


def default_out(run: str | Path) -> Path:
    """``RUNNAME-curves.html`` in the current folder.

    Not inside the run: a lens folder holds the lens's own files, which ``--force`` of the next
    ``train`` into it may replace, and which one may share or upload as they are.
    """
    name = Path(run).resolve().name or "run"
    return Path(f"{name}-curves.html")


def run(run: str | Path, out: str | Path | None = None, *, plotly: str = DEFAULT_PLOTLY) -> Path:
    """Draw ``run``'s loss, learning rate and per-layer validation KL into ``out``.

    ``out`` defaults to :func:`default_out` (in the current folder, not the run's); rows are
    labelled by the lens's points once the lens is saved. ``plotly``: how an HTML page gets
    plotly.js (see :mod:`tunedlens.plot.html`).
    """
    from tunedlens.plot.training_figures import save_training_curves

    run = Path(run)
    check_plotly_mode(plotly)
    records = read_train_log(run)  # first: a wrong RUN is the likelier mistake than a wrong --out
    target = check_out_file(out if out is not None else default_out(run), CURVE_SUFFIXES)
    labels = None
    if (run / "config.json").exists():
        from tunedlens.arch.points import row_label
        from tunedlens.lenses.io.files import read_lens

        stored = read_lens(run)
        rows = range(stored.translator.n_rows)
        labels = [row_label(stored.points, row, stored.n_blocks) for row in rows]
    title = f"training: {run.resolve().name}"
    return save_training_curves(records, target, title=title, row_labels=labels, plotly=plotly)
