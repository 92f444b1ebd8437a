"""Heatmaps of trajectory statistics: interactive plotly (HTML) and static matplotlib (PNG).

Cells show the top-1 token, hovering shows the top-5 with probabilities, rows are layers
(the output row on top) and columns are the prompt's tokens. Figures are returned as objects:
in Jupyter a plotly figure displays inline.

Panels of one statistic share one colour scale (so lenses drawn side by side can be compared
by colour) and one colour bar. Heavy-tailed statistics (KL, cross-entropy, ranks) are drawn on a
log scale: on a linear one the logit lens's first rows (≈150 bits of KL) leave every other cell
the same dark colour.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tunedlens.engine.stats import PAIR_STATS, STATS, TrajectoryStat
from tunedlens.errors import InputError, require
from tunedlens.plot.html import DEFAULT_PLOTLY, write_html

COLOURS = {
    "bits": "Viridis",
    "probability": "Blues",
    "rank": "Viridis_r",
    "nats": "RdBu",
    "cosine": "RdBu",
}
_MATPLOTLIB_COLOURS = {
    "Viridis": "viridis",
    "Viridis_r": "viridis_r",
    "Blues": "Blues",
    "RdBu": "RdBu",
}

LOG_SCALED = frozenset(
    {
        STATS["kl"].title,
        STATS["ce"].title,
        STATS["rank"].title,
        STATS["model-rank"].title,
        PAIR_STATS["kl"].title,
    }
)
"""Statistics (by title) drawn on a log colour scale: heavy-tailed ones."""
LOG_FLOOR = {"bits": 0.01, "rank": 1.0}
"""The smallest value a log scale shows, by units; smaller values get its colour."""
MISSING_COLOUR = "#c8c8c8"
"""Cells without a value (e.g. the target of the last position): grey, not a colour of the scale."""
_VISIBLE_WHITESPACE = "␣↵⇥␍"
CAPTION = (
    "cell text: the top-1 token (␣ space, ↵ newline; ‹ › around tokens of punctuation only); "
    "grey cells: no value"
)
X_TITLE = "position: input token"
Y_TITLE = "row (output = the model's own output)"


def _plotly():
    go = require("plotly.graph_objects", "plot", pip_name="plotly")
    subplots = require("plotly.subplots", "plot", pip_name="plotly")
    return go, subplots


def cell_text(label: str) -> str:
    """A token as a cell shows it: punctuation-only tokens in ‹ ›, so ``-`` is not read as blank.

    Whitespace is already visible (``␣``); a token made only of punctuation or symbols (``-``,
    ``.``, ``"``) is the one that reads like a placeholder, so it gets the marks.
    """
    if label and not any(ch.isalnum() or ch in _VISIBLE_WHITESPACE for ch in label):
        return f"‹{label}›"
    return label


def _tick_text(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


@dataclass(frozen=True)
class Scale:
    """One colour scale: the range in the statistic's units, linear or log."""

    units: str
    low: float
    high: float
    log: bool = False
    clipped: bool = False
    """Whether some values lie below ``low`` (a log scale's floor) and are drawn at it."""

    @property
    def colours(self) -> str:
        """The plotly colour scale's name."""
        return COLOURS.get(self.units, "Viridis")

    def transform(self, values: np.ndarray) -> np.ndarray:
        """Values as the colour scale places them (log10 on a log scale; NaN stays NaN)."""
        values = np.asarray(values, dtype=float)
        if not self.log:
            return values
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log10(np.maximum(values, self.low))

    @property
    def zmin(self) -> float:
        """The bottom of the scale, transformed."""
        return math.log10(self.low) if self.log else self.low

    @property
    def zmax(self) -> float:
        """The top of the scale, transformed."""
        return math.log10(self.high) if self.log else self.high

    def ticks(self) -> tuple[list[float], list[str]] | None:
        """Tick positions (transformed) and labels (the values) of a log scale; None if linear."""
        if not self.log:
            return None
        first, last = math.floor(math.log10(self.low)), math.ceil(math.log10(self.high))
        decades = [10.0**e for e in range(first, last + 1)]
        values = [m * d for d in decades for m in (1, 2, 5) if self.low <= m * d <= self.high]
        if len(values) > 7:
            values = [v for v in values if v in decades]
        if len(values) < 2:
            values = sorted({self.low, *values, self.high})
        return [math.log10(v) for v in values], [_tick_text(v) for v in values]

    @property
    def title(self) -> str:
        """The colour bar's title: units and what kind of scale."""
        if not self.log:
            return f"{self.units}, linear"
        if self.clipped:
            low = _tick_text(self.low)
            return f"{self.units}, log scale (below {low} coloured as {low})"
        return f"{self.units}, log scale"


def shared_scales(stats: Sequence[TrajectoryStat]) -> list[Scale]:
    """One scale per panel; panels of the same statistic (name and units) get the same one.

    A statistic with a fixed range (probabilities 0–1) keeps it; otherwise the range spans the
    finite values of all its panels.
    """
    groups: dict[tuple[str, str], list[TrajectoryStat]] = {}
    for stat in stats:
        groups.setdefault((stat.name, stat.units), []).append(stat)
    scales = {}
    for (name, units), members in groups.items():
        finite = np.concatenate([np.asarray(s.values, dtype=float).ravel() for s in members])
        finite = finite[np.isfinite(finite)]
        fixed_low = next((s.vmin for s in members if s.vmin is not None), None)
        fixed_high = next((s.vmax for s in members if s.vmax is not None), None)
        log = name in LOG_SCALED and fixed_low is None and fixed_high is None
        if log:
            floor = LOG_FLOOR.get(units, 0.01)
            positive = finite[finite > 0]
            low = max(floor, float(positive.min())) if positive.size else floor
            high = float(finite.max()) if finite.size else low * 10
            high = max(high, low * 10)
            scales[name, units] = Scale(units, low, high, True, bool((finite < low).any()))
            continue
        data_low = float(finite.min()) if finite.size else 0.0
        data_high = float(finite.max()) if finite.size else 0.0
        low = fixed_low if fixed_low is not None else min(0.0, data_low)
        high = fixed_high if fixed_high is not None else max(data_high, low)
        if high <= low:
            high = low + 1.0
        scales[name, units] = Scale(units, float(low), float(high))
    return [scales[s.name, s.units] for s in stats]


def _hover(stat: TrajectoryStat) -> list[list[str]]:
    rows, columns = stat.values.shape
    out = []
    for r in range(rows):
        line = []
        for c in range(columns):
            value = stat.values[r, c]
            shown = f"{value:.4g} {stat.units}" if np.isfinite(value) else "no value"
            text = f"row {stat.row_labels[r]}, position {c}: {stat.column_labels[c]}"
            text += f"<br>{stat.name}: {shown}"
            if stat.hover is not None:
                text += f"<br>{stat.hover[r][c]}"
            line.append(text)
        out.append(line)
    return out


def heatmap_trace(
    stat: TrajectoryStat,
    scale: Scale | None = None,
    *,
    show_scale: bool = True,
    colorbar: dict | None = None,
):
    """A plotly heatmap trace for one statistic, coloured on ``scale`` (default: its own).

    ``colorbar`` adds plotly colour-bar settings (where it goes).
    """
    go, _ = _plotly()
    scale = scale or shared_scales([stat])[0]
    values = scale.transform(stat.values)
    labels = stat.cell_labels
    colorbar = {
        "title": {"text": scale.title, "side": "right"},
        "thickness": 14,
        **(colorbar or {}),
    }
    ticks = scale.ticks()
    if ticks is not None:
        colorbar.update(tickmode="array", tickvals=ticks[0], ticktext=ticks[1])
    return go.Heatmap(
        z=np.where(np.isfinite(values), values, None).tolist(),
        x=[f"{i}: {label}" for i, label in enumerate(stat.column_labels)],
        y=stat.row_labels,
        text=None if labels is None else [[cell_text(t) for t in row] for row in labels],
        texttemplate="%{text}" if labels is not None else None,
        textfont={"size": 11},
        customdata=_hover(stat),
        hovertemplate="%{customdata}<extra></extra>",
        colorscale=scale.colours,
        zmin=scale.zmin,
        zmax=scale.zmax,
        colorbar=colorbar,
        showscale=show_scale,
    )


def _last_of_each(stats: Sequence[TrajectoryStat]) -> set[int]:
    """The index of the last panel of each statistic (where its colour bar goes)."""
    last = {}
    for index, stat in enumerate(stats):
        last[stat.name, stat.units] = index
    return set(last.values())


def figure(
    stats: Sequence[TrajectoryStat],
    titles: Sequence[str] | None = None,
    *,
    columns: int = 1,
    title: str | None = None,
):
    """One figure with a heatmap panel per statistic (``columns`` side by side).

    Panels of one statistic share a colour scale, drawn once: a colour bar to the right of the
    statistic's last panel, as tall as that panel.
    """
    _, subplots = _plotly()
    rows = -(-len(stats) // columns)
    titles = list(titles or [f"{s.name} ({s.units})" for s in stats])
    scales = shared_scales(stats)
    bars = _last_of_each(stats)
    bar_inside = any(index % columns != columns - 1 for index in bars)
    n_rows, n_cols = len(stats[0].row_labels), len(stats[0].column_labels)
    panel_w, panel_h = max(320, 76 * n_cols), max(220, 18 * n_rows)
    gap_w, gap_h = (200 if bar_inside else 90), 150
    margin = {"l": 90, "r": 150, "t": 100, "b": 150}
    area_w = columns * panel_w + (columns - 1) * gap_w
    area_h = rows * panel_h + (rows - 1) * gap_h
    fig = subplots.make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=titles,
        horizontal_spacing=gap_w / area_w if columns > 1 else 0.0,
        vertical_spacing=gap_h / area_h if rows > 1 else 0.0,
    )
    for index, (stat, scale) in enumerate(zip(stats, scales, strict=True)):
        row, col = divmod(index, columns)
        suffix = "" if index == 0 else str(index + 1)
        x_domain = fig.layout[f"xaxis{suffix}"].domain
        y_domain = fig.layout[f"yaxis{suffix}"].domain
        place = {
            "x": x_domain[1] + 8 / area_w,
            "xanchor": "left",
            "y": (y_domain[0] + y_domain[1]) / 2,
            "yanchor": "middle",
            "len": y_domain[1] - y_domain[0],
            "lenmode": "fraction",
        }
        trace = heatmap_trace(stat, scale, show_scale=index in bars, colorbar=place)
        fig.add_trace(trace, row=row + 1, col=col + 1)
    fig.update_layout(
        title=title,
        height=area_h + margin["t"] + margin["b"],
        width=area_w + margin["l"] + margin["r"],
        margin=margin,
        template="plotly_white",
        plot_bgcolor=MISSING_COLOUR,
    )
    fig.update_xaxes(title_text=X_TITLE, showgrid=False, tickangle=-30)
    fig.update_yaxes(title_text=Y_TITLE, showgrid=False, col=1)
    fig.update_yaxes(showgrid=False)
    fig.add_annotation(
        text=CAPTION,
        xref="paper",
        yref="paper",
        x=0,
        y=0,
        xanchor="left",
        yanchor="top",
        yshift=-110,
        showarrow=False,
        font={"size": 11, "color": "#555"},
    )
    return fig


def matplotlib_figure(
    stats: Sequence[TrajectoryStat],
    titles: Sequence[str] | None = None,
    *,
    columns: int = 1,
    title: str | None = None,
    dpi: int = 150,
):
    """The same panels as :func:`figure`, drawn with matplotlib (for PNG)."""
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg", force=False)
    pyplot = require("matplotlib.pyplot", "plot", pip_name="matplotlib")
    colors = require("matplotlib.colors", "plot", pip_name="matplotlib")
    rows = -(-len(stats) // columns)
    n_rows, n_cols = len(stats[0].row_labels), len(stats[0].column_labels)
    size = (max(4.5, 0.95 * n_cols + 2.2) * columns, max(3.0, 0.3 * n_rows + 1.6) * rows)
    fig, axes = pyplot.subplots(
        rows, columns, figsize=size, dpi=dpi, squeeze=False, layout="constrained"
    )
    titles = list(titles or [f"{s.name} ({s.units})" for s in stats])
    scales = shared_scales(stats)
    groups: dict[tuple[str, str], list] = {}
    for index, (stat, scale) in enumerate(zip(stats, scales, strict=True)):
        axis = axes[divmod(index, columns)]
        groups.setdefault((stat.name, stat.units), []).append(axis)
        cmap = pyplot.get_cmap(_MATPLOTLIB_COLOURS.get(scale.colours, "viridis"))
        cmap = cmap.with_extremes(bad=MISSING_COLOUR)
        norm = colors.Normalize(scale.zmin, scale.zmax)
        values = scale.transform(stat.values)
        image = axis.imshow(
            np.ma.masked_invalid(values), aspect="auto", origin="lower", cmap=cmap, norm=norm
        )
        axis.set_yticks(range(n_rows), stat.row_labels, fontsize=8)
        labels = [f"{i}: {label}" for i, label in enumerate(stat.column_labels)]
        axis.set_xticks(range(n_cols), labels, rotation=30, ha="right", fontsize=9)
        axis.set_title(titles[index], fontsize=10)
        axis.set_xlabel(X_TITLE, fontsize=9)
        if index % columns == 0:
            axis.set_ylabel(Y_TITLE, fontsize=9)
        if stat.cell_labels is not None and n_cols * n_rows <= 1200:
            for r in range(n_rows):
                for c in range(n_cols):
                    value = values[r, c]
                    red, green, blue, _ = cmap(norm(value)) if np.isfinite(value) else (1, 1, 1, 1)
                    dark = 0.299 * red + 0.587 * green + 0.114 * blue > 0.55
                    axis.text(
                        c,
                        r,
                        cell_text(stat.cell_labels[r][c]),
                        ha="center",
                        va="center",
                        fontsize=7.5,
                        color="black" if dark else "white",
                    )
        if index in _last_of_each(stats):
            bar = fig.colorbar(image, ax=groups[stat.name, stat.units], pad=0.01, fraction=0.05)
            bar.set_label(scale.title, fontsize=9)
            ticks = scale.ticks()
            if ticks is not None:
                bar.set_ticks(ticks[0], labels=ticks[1])
    for index in range(len(stats), rows * columns):
        axes[divmod(index, columns)].axis("off")
    if title:
        fig.suptitle(title)
    fig.supxlabel(CAPTION, fontsize=8, color="#555")
    return fig


def save(
    stats: Sequence[TrajectoryStat],
    path: str | os.PathLike,
    titles=None,
    *,
    columns: int = 1,
    title: str | None = None,
    plotly: str = DEFAULT_PLOTLY,
) -> Path:
    """Write ``.html`` (plotly, see :mod:`tunedlens.plot.html`) or ``.png`` (matplotlib).

    ``plotly`` is how an HTML page gets plotly.js (``directory``: a shared copy beside it).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".html":
        fig = figure(stats, titles, columns=columns, title=title)
        write_html(fig, path, title=title or "tunedlens trajectory", plotly=plotly)
        return path
    if suffix == ".png":
        fig = matplotlib_figure(stats, titles, columns=columns, title=title)
        fig.savefig(path)
        require("matplotlib.pyplot", "plot", pip_name="matplotlib").close(fig)
        return path
    raise InputError(f"--out must end in .html or .png, got {path.name!r}")
