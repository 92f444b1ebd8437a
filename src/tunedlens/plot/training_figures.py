"""Training curves from a run's log.

Loss and validation KL over steps, the learning rate, and a heatmap of every layer's validation
KL over the validations.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunedlens.errors import require
from tunedlens.plot.html import DEFAULT_PLOTLY, write_html


def curve_series(records: Sequence[dict]) -> dict:
    """The series the figures draw, from ``train_log.jsonl`` records (one per optimizer step)."""
    validated = [r for r in records if r.get("val_kl_bits") is not None]
    return {
        "step": [r["step"] for r in records],
        "tokens": [r["tokens"] for r in records],
        "loss_bits": [r["loss_bits"] for r in records],
        "lr": [r["lr"] for r in records],
        "tokens_per_s": [r.get("tokens_per_s") for r in records],
        "val_step": [r["step"] for r in validated],
        "val_mean_bits": [float(np.mean(r["val_kl_bits"])) for r in validated],
        "val_kl_bits": np.array([r["val_kl_bits"] for r in validated], dtype=float).reshape(
            len(validated), -1
        ),
    }


def save_training_curves(
    records: Sequence[dict],
    out: Path,
    *,
    title: str,
    row_labels: Sequence[str] | None = None,
    plotly: str = DEFAULT_PLOTLY,
) -> Path:
    """Draw the curves of ``records`` into ``out`` (``.html``: interactive plotly; ``.png``).

    ``plotly``: how an HTML page gets plotly.js (see :mod:`tunedlens.plot.html`).
    """
    series = curve_series(records)
    heat = series["val_kl_bits"]
    labels = list(row_labels or [str(i) for i in range(heat.shape[1])])
    if out.suffix.lower() == ".html":
        go = require("plotly.graph_objects", "plot", pip_name="plotly")
        subplots = require("plotly.subplots", "plot", pip_name="plotly")
        figure = subplots.make_subplots(
            rows=3,
            cols=1,
            vertical_spacing=0.08,
            subplot_titles=(
                "training loss (sum over layers) and mean validation KL",
                "learning rate",
                "validation KL per layer (bits)",
            ),
        )
        figure.add_trace(
            go.Scatter(x=series["step"], y=series["loss_bits"], name="training loss (bits)"), 1, 1
        )
        figure.add_trace(
            go.Scatter(
                x=series["val_step"],
                y=series["val_mean_bits"],
                mode="lines+markers",
                name="validation KL, mean over layers (bits)",
            ),
            1,
            1,
        )
        figure.add_trace(go.Scatter(x=series["step"], y=series["lr"], name="learning rate"), 2, 1)
        if heat.size:
            figure.add_trace(
                go.Heatmap(
                    z=heat.T.tolist(),
                    x=series["val_step"],
                    y=labels,
                    colorscale="Viridis",
                    colorbar={"title": {"text": "bits"}, "y": 0.15, "len": 0.3},
                ),
                3,
                1,
            )
        figure.update_xaxes(title_text="optimizer step", row=3, col=1)
        figure.update_layout(title=title, height=950, template="plotly_white")
        write_html(figure, out, title=title, plotly=plotly)
        return out
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg", force=False)
    pyplot = require("matplotlib.pyplot", "plot", pip_name="matplotlib")
    fig, (loss, rate, grid) = pyplot.subplots(
        3, 1, figsize=(8, 10), dpi=110, gridspec_kw={"height_ratios": [2, 1, 2]}
    )
    loss.plot(series["step"], series["loss_bits"], label="training loss (bits, sum over layers)")
    loss.plot(
        series["val_step"], series["val_mean_bits"], marker="o", label="validation KL, mean (bits)"
    )
    loss.set(yscale="log", ylabel="bits", title=title)
    loss.legend(fontsize=8)
    rate.plot(series["step"], series["lr"])
    rate.set(ylabel="learning rate")
    if heat.size:
        image = grid.imshow(
            heat.T,
            aspect="auto",
            origin="lower",
            cmap="viridis",
            extent=(-0.5, len(series["val_step"]) - 0.5, -0.5, heat.shape[1] - 0.5),
        )
        grid.set_xticks(
            range(len(series["val_step"])), [str(s) for s in series["val_step"]], fontsize=7
        )
        ticks = list(range(0, len(labels), max(1, len(labels) // 16)))
        grid.set_yticks(ticks, [labels[i] for i in ticks], fontsize=7)
        fig.colorbar(image, ax=grid, label="validation KL (bits)")
    grid.set(xlabel="optimizer step (validations)", ylabel="row")
    fig.tight_layout()
    fig.savefig(out)
    pyplot.close(fig)
    return out


__all__ = ["curve_series", "save_training_curves"]
