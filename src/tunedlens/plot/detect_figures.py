"""Figures of an anomaly-detection report: trajectories by kind of prompt, and ROC curves.

Per task, two figures, each as HTML (plotly; plotly.js shared per folder) and PNG
(matplotlib): ``trajectories_<task>``, the median of each statistic per row with a 10-90 %
band for normal, injected and control prompts (one row of panels per lens); ``roc_<task>``,
the ROC curves of every detector (rows) and feature set (columns), one line per lens. Takes
the plain ``detect.json`` payload.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunedlens.errors import require
from tunedlens.plot.html import DEFAULT_PLOTLY, write_html

KIND_COLOURS = {
    "normal": "#1f77b4",
    "injected": "#d62728",
    "anomalous": "#d62728",
    "separators": "#2ca02c",
    "filler": "#ff7f0e",
}
OTHER_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LENS_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _colour(kind: str, kinds: list[str]) -> str:
    if kind in KIND_COLOURS:
        return KIND_COLOURS[kind]
    return OTHER_COLOURS[kinds.index(kind) % len(OTHER_COLOURS)]


def _rgba(colour: str, alpha: float) -> str:
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"


def _stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _libraries():
    go = require("plotly.graph_objects", "plot", pip_name="plotly")
    subplots = require("plotly.subplots", "plot", pip_name="plotly")
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg", force=False)
    pyplot = require("matplotlib.pyplot", "plot", pip_name="matplotlib")
    return go, subplots, pyplot


def save_detect_figures(payload: dict, out: Path, *, plotly: str = DEFAULT_PLOTLY) -> list[Path]:
    """Write ``trajectories_<task>`` and ``roc_<task>`` (``.html`` and ``.png``) into ``out``.

    Returns the paths written (with ``plotly="directory"``, the shared plotly.js once).
    """
    written = []
    for name, task in payload["tasks"].items():
        written += _trajectory_figure(payload, name, task, out, plotly)
        rows = [r for r in payload["roc"] if r["task"] == name]
        if rows:
            written += _roc_figure(payload, name, rows, out, plotly)
    return list(dict.fromkeys(written))


def _trajectory_figure(
    payload: dict, name: str, task: dict, out: Path, plotly: str = DEFAULT_PLOTLY
) -> list[Path]:
    go, subplots, pyplot = _libraries()
    ticker = require("matplotlib.ticker", "plot", pip_name="matplotlib")
    stats = payload["settings"]["trajectory_stats"]
    lenses = list(task["trajectories"])
    kinds = list(next(iter(next(iter(task["trajectories"].values())).values())))
    titles = [f"{lens}: {_title(stats, s)}" for lens in lenses for s in stats]
    figure = subplots.make_subplots(rows=len(lenses), cols=len(stats), subplot_titles=titles)
    fig, axes = pyplot.subplots(
        len(lenses),
        len(stats),
        figsize=(4.2 * len(stats), 2.6 * len(lenses) + 0.9),
        dpi=110,
        squeeze=False,
        layout="constrained",
    )
    for r, lens in enumerate(lenses):
        for c, stat in enumerate(stats):
            axis = axes[r][c]
            for kind in kinds:
                entry = task["trajectories"][lens][stat][kind]
                x, median, low, high = _series(entry, stat)
                colour, label = _colour(kind, kinds), f"{kind} (n={entry['n']})"
                band = go.Scatter(
                    x=x + x[::-1],
                    y=high + low[::-1],
                    fill="toself",
                    fillcolor=_rgba(colour, 0.12),
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=kind,
                )
                line = go.Scatter(
                    x=x,
                    y=median,
                    mode="lines",
                    name=label,
                    line={"color": colour},
                    legendgroup=kind,
                    showlegend=(r, c) == (0, 0),
                )
                figure.add_traces([band, line], rows=r + 1, cols=c + 1)
                axis.fill_between(x, low, high, color=colour, alpha=0.12, linewidth=0)
                axis.plot(x, median, color=colour, label=label if (r, c) == (0, 0) else None)
            if stat == "margin":
                axis.axhline(0, color="grey", linewidth=0.6, linestyle=":")
            if stat == "kl":
                axis.set_yscale("log")
                figure.update_yaxes(type="log", row=r + 1, col=c + 1)
            axis.set_title(f"{lens}: {_title(stats, stat)}", fontsize=9)
            axis.set_ylabel(stats[stat]["units"], fontsize=8)
            axis.tick_params(labelsize=7)
            axis.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
            figure.update_yaxes(title_text=stats[stat]["units"], row=r + 1, col=c + 1)
    output_row = payload["settings"]["output_row"]
    for axis in axes[-1]:
        axis.set_xlabel(f"row (0 = embeddings, {output_row} = output)", fontsize=8)
    title = (
        f"{name}: median per row, 10–90 % band, held-out prompts · {payload['settings']['model']}"
    )
    figure.update_layout(title=title, template="plotly_white", height=280 * len(lenses) + 140)
    fig.suptitle(title, fontsize=10)
    fig.legend(loc="outside lower center", ncol=len(kinds), fontsize=8)
    return _write(figure, fig, pyplot, out / f"trajectories_{_stem(name)}", title, plotly)


def _title(stats: dict, stat: str) -> str:
    return stats[stat]["title"] + (" (log scale)" if stat == "kl" else "")


def _series(entry: dict, stat: str) -> tuple[list, list, list, list]:
    """x, median, 10th and 90th percentile; KL without the output row (0 there), floored for log."""
    median, low, high = entry["median"], entry["q10"], entry["q90"]
    if stat == "kl":
        floor = 1e-3
        median, low, high = ([max(v, floor) for v in series[:-1]] for series in (median, low, high))
    return list(range(len(median))), median, low, high


def _roc_figure(
    payload: dict, name: str, rows: list[dict], out: Path, plotly: str = DEFAULT_PLOTLY
) -> list[Path]:
    go, subplots, pyplot = _libraries()
    detectors = list(dict.fromkeys(r["detector"] for r in rows))
    features = list(dict.fromkeys(r["features"] for r in rows))
    results = {
        (r["lens"], r["features"], r["detector"]): r
        for r in payload["results"]
        if r["task"] == name
    }
    lenses = list(dict.fromkeys(r["lens"] for r in rows))
    hidden_row = payload["settings"].get("hidden_row")
    titles = [f"{d} · {f}" for d in detectors for f in features]
    figure = subplots.make_subplots(rows=len(detectors), cols=len(features), subplot_titles=titles)
    seen: set[str] = set()
    fig, axes = pyplot.subplots(
        len(detectors),
        len(features),
        figsize=(3.6 * len(features), 3.4 * len(detectors)),
        dpi=110,
        squeeze=False,
    )
    for r, detector in enumerate(detectors):
        for c, feature_set in enumerate(features):
            axis = axes[r][c]
            axis.plot([0, 1], [0, 1], color="grey", linewidth=0.6, linestyle=":")
            figure.add_trace(
                go.Scatter(
                    x=[0, 1],
                    y=[0, 1],
                    mode="lines",
                    showlegend=False,
                    line={"color": "grey", "dash": "dot", "width": 1},
                ),
                row=r + 1,
                col=c + 1,
            )
            lines = []
            for curve in rows:
                if curve["detector"] != detector or curve["features"] != feature_set:
                    continue
                lens = curve["lens"]
                colour = LENS_COLOURS[lenses.index(lens) % len(LENS_COLOURS)]
                shown = lens if lens is not None else f"row {hidden_row} states"
                value = results[(lens, feature_set, detector)]["auroc"]
                lines.append(f"{shown}: {value:.2f}")
                axis.plot(
                    curve["fpr"],
                    curve["tpr"],
                    color=colour,
                    linewidth=1.3,
                    label=f"{shown} (AUROC {value:.2f})",
                )
                # One legend entry per lens; each panel's AUROCs are written in the panel.
                first = shown not in seen
                seen.add(shown)
                figure.add_trace(
                    go.Scatter(
                        x=curve["fpr"],
                        y=curve["tpr"],
                        mode="lines",
                        name=shown,
                        legendgroup=shown,
                        showlegend=first,
                        line={"color": colour},
                        hovertemplate=f"{shown}, {detector}, {feature_set}<br>"
                        "FPR %{x:.2f}, TPR %{y:.2f}<extra></extra>",
                    ),
                    row=r + 1,
                    col=c + 1,
                )
            index = r * len(features) + c + 1
            axis_id = "" if index == 1 else str(index)
            figure.add_annotation(
                text="AUROC<br>" + "<br>".join(lines),
                xref=f"x{axis_id} domain",
                yref=f"y{axis_id} domain",
                x=0.98,
                y=0.02,
                xanchor="right",
                yanchor="bottom",
                showarrow=False,
                align="right",
                font={"size": 10},
            )
            axis.set_title(f"{detector} · {feature_set}", fontsize=9)
            axis.set(xlim=(0, 1), ylim=(0, 1.02))
            axis.tick_params(labelsize=7)
            axis.legend(fontsize=7, loc="lower right")
            if r == len(detectors) - 1:
                axis.set_xlabel("false-positive rate (normal)", fontsize=8)
                figure.update_xaxes(title_text="false-positive rate (normal)", row=r + 1, col=c + 1)
            if c == 0:
                axis.set_ylabel("true-positive rate (anomalous)", fontsize=8)
                figure.update_yaxes(title_text="true-positive rate", row=r + 1, col=c + 1)
    title = f"{name}: ROC of held-out normal vs anomalous prompts · {payload['settings']['model']}"
    figure.update_layout(title=title, template="plotly_white", height=320 * len(detectors) + 100)
    figure.update_xaxes(range=[0, 1])
    figure.update_yaxes(range=[0, 1.02])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _write(figure, fig, pyplot, out / f"roc_{_stem(name)}", title, plotly)


def _write(figure, fig, pyplot, stem: Path, title: str, plotly: str) -> list[Path]:
    html, png = Path(f"{stem}.html"), Path(f"{stem}.png")
    written = write_html(figure, html, title=title, plotly=plotly)
    fig.savefig(png, bbox_inches="tight")
    pyplot.close(fig)
    return [*written, png]
