"""Heatmaps of trajectory statistics: interactive plotly (HTML) and static matplotlib (PNG).

Cells show the top-1 token, hovering shows the top-5 with probabilities, rows are layers
(the output row on top) and columns are the prompt's tokens. Figures are returned as objects:
in Jupyter a plotly figure displays inline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tunedlens.engine.stats import TrajectoryStat
from tunedlens.errors import InputError, require

COLOURS = {
    "bits": "Viridis",
    "probability": "Blues",
    "rank": "Viridis_r",
    "nats": "RdBu",
    "cosine": "RdBu",
}


def _plotly():
    go = require("plotly.graph_objects", "plot", pip_name="plotly")
    subplots = require("plotly.subplots", "plot", pip_name="plotly")
    return go, subplots


def heatmap_trace(
    stat: TrajectoryStat, *, show_scale: bool = True, colorbar_x: float | None = None
):
    """A plotly heatmap trace for one statistic."""
    go, _ = _plotly()
    values = stat.values
    x = [f"{i}: {label}" for i, label in enumerate(stat.column_labels)]
    colorbar = {"title": {"text": stat.units}}
    if colorbar_x is not None:
        colorbar["x"] = colorbar_x
    return go.Heatmap(
        z=np.where(np.isfinite(values), values, None).tolist(),
        x=x,
        y=stat.row_labels,
        text=stat.cell_labels,
        texttemplate="%{text}" if stat.cell_labels is not None else None,
        textfont={"size": 10},
        customdata=stat.hover,
        hovertemplate=(
            "row %{y}, position %{x}<br>"
            + f"{stat.name}: "
            + "%{z:.3f}"
            + ("<br>%{customdata}" if stat.hover is not None else "")
            + "<extra></extra>"
        ),
        colorscale=COLOURS.get(stat.units, "Viridis"),
        zmin=stat.vmin,
        zmax=stat.vmax,
        colorbar=colorbar,
        showscale=show_scale,
    )


def figure(
    stats: Sequence[TrajectoryStat],
    titles: Sequence[str] | None = None,
    *,
    columns: int = 1,
    title: str | None = None,
):
    """One figure with a heatmap panel per statistic (``columns`` side by side)."""
    _, subplots = _plotly()
    rows = -(-len(stats) // columns)
    titles = list(titles or [f"{s.name} ({s.units})" for s in stats])
    fig = subplots.make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=titles,
        horizontal_spacing=0.12,
        vertical_spacing=0.08,
    )
    for index, stat in enumerate(stats):
        row, col = divmod(index, columns)
        colorbar_x = (col + 1) / columns - 0.02 if columns > 1 else None
        fig.add_trace(heatmap_trace(stat, colorbar_x=colorbar_x), row=row + 1, col=col + 1)
    height = max(320, 18 * len(stats[0].row_labels) + 120) * rows
    width = max(600, 70 * len(stats[0].column_labels) + 200) * columns
    fig.update_layout(title=title, height=height, width=width, template="plotly_white")
    fig.update_yaxes(title_text="row")
    return fig


def matplotlib_figure(
    stats: Sequence[TrajectoryStat],
    titles: Sequence[str] | None = None,
    *,
    columns: int = 1,
    title: str | None = None,
    dpi: int = 100,
):
    """The same panels as :func:`figure`, drawn with matplotlib (for PNG)."""
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg", force=False)
    pyplot = require("matplotlib.pyplot", "plot", pip_name="matplotlib")
    rows = -(-len(stats) // columns)
    n_rows, n_cols = len(stats[0].row_labels), len(stats[0].column_labels)
    size = (max(6.0, 0.8 * n_cols + 2.5) * columns, max(3.0, 0.28 * n_rows + 1.2) * rows)
    fig, axes = pyplot.subplots(rows, columns, figsize=size, dpi=dpi, squeeze=False)
    titles = list(titles or [f"{s.name} ({s.units})" for s in stats])
    for index, stat in enumerate(stats):
        axis = axes[divmod(index, columns)]
        image = axis.imshow(
            stat.values,
            aspect="auto",
            origin="lower",
            vmin=stat.vmin,
            vmax=stat.vmax,
            cmap="viridis",
        )
        fig.colorbar(image, ax=axis, label=stat.units)
        axis.set_yticks(range(n_rows), stat.row_labels, fontsize=7)
        axis.set_xticks(range(n_cols), stat.column_labels, rotation=45, ha="right", fontsize=8)
        axis.set_title(titles[index], fontsize=10)
        if stat.cell_labels is not None and n_cols * n_rows <= 1200:
            for r in range(n_rows):
                for c in range(n_cols):
                    axis.text(
                        c,
                        r,
                        stat.cell_labels[r][c],
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white",
                    )
    for index in range(len(stats), rows * columns):
        axes[divmod(index, columns)].axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save(
    stats: Sequence[TrajectoryStat],
    path: str | os.PathLike,
    titles=None,
    *,
    columns: int = 1,
    title: str | None = None,
) -> Path:
    """Write ``.html`` (self-contained plotly, works offline) or ``.png`` (matplotlib)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".html":
        figure(stats, titles, columns=columns, title=title).write_html(
            path, include_plotlyjs=True, full_html=True
        )
    elif suffix == ".png":
        fig = matplotlib_figure(stats, titles, columns=columns, title=title)
        fig.savefig(path)
        require("matplotlib.pyplot", "plot", pip_name="matplotlib").close(fig)
    else:
        raise InputError(f"--out must end in .html or .png, got {path.name!r}")
    return path
