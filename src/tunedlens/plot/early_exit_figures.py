"""Early-exit figures: quality against net compute saved, and where tokens exit.

Takes the plain ``early_exit.json`` payload. One panel per lens; each figure is written as a PNG
(matplotlib) and as self-contained HTML (plotly, its JavaScript embedded, so it opens offline).
"""

from __future__ import annotations

from pathlib import Path

from tunedlens.errors import require

MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


def _libraries():
    go = require("plotly.graph_objects", "plot", pip_name="plotly")
    subplots = require("plotly.subplots", "plot", pip_name="plotly")
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg", force=False)
    pyplot = require("matplotlib.pyplot", "plot", pip_name="matplotlib")
    return go, subplots, pyplot


def save_early_exit_figures(metrics: dict, out: Path) -> list[Path]:
    """Write ``early_exit_tradeoff.{png,html}`` and ``early_exit_rows.{png,html}`` into ``out``."""
    return [*_tradeoff(metrics, out), *_rows(metrics, out)]


def _tradeoff(metrics: dict, out: Path) -> list[Path]:
    go, subplots, pyplot = _libraries()
    names = list(metrics["lenses"])
    delta = f"{max(metrics['calibration']['deltas']):g}"
    figure = subplots.make_subplots(
        rows=1, cols=len(names), shared_yaxes=True, subplot_titles=names
    )
    fig, axes = pyplot.subplots(
        1, len(names), figsize=(4.2 * len(names) + 1.9, 4.2), dpi=120, sharey=True, squeeze=False
    )
    colors = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    plotly_colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for column, name in enumerate(names):
        entry, axis = metrics["lenses"][name], axes[0][column]
        for index, (measure, sweep) in enumerate(entry["measures"].items()):
            saved = [100 * s for s in sweep["saved"]]
            color = colors[index % len(colors)]
            axis.plot(
                saved,
                sweep["agreement"],
                marker=MARKERS[index % len(MARKERS)],
                markersize=4,
                color=color,
                label=measure,
                linewidth=1.2,
            )
            hover = [
                f"{measure} {t:g}: rows {r:.2f}, ΔCE {c:+.3f} bits"
                for t, r, c in zip(
                    sweep["thresholds"], sweep["rows_used"], sweep["delta_ce_bits"], strict=True
                )
            ]
            figure.add_trace(
                go.Scatter(
                    x=saved,
                    y=sweep["agreement"],
                    mode="lines+markers",
                    name=measure,
                    legendgroup=measure,
                    showlegend=column == 0,
                    text=hover,
                    line_color=plotly_colors[index % len(plotly_colors)],
                ),
                row=1,
                col=column + 1,
            )
            result = metrics["calibration"]["results"][name][measure].get(delta, {})
            if result.get("certified"):
                test = result["test"]
                axis.scatter(
                    [100 * test["saved"]],
                    [test["agreement"]],
                    marker="x",
                    s=50,
                    color=color,
                    zorder=5,
                )
        for key, marker, label in (
            ("oracle", "*", "oracle"),
            ("oracle_on_schedule", "*", "oracle at checks"),
        ):
            point = entry[key]
            filled = key == "oracle"
            axis.scatter(
                [100 * point["saved"]],
                [point["agreement"]],
                marker=marker,
                s=160,
                facecolor="black" if filled else "none",
                edgecolor="black",
                zorder=6,
                label=label,
            )
            figure.add_trace(
                go.Scatter(
                    x=[100 * point["saved"]],
                    y=[point["agreement"]],
                    mode="markers",
                    name=label,
                    legendgroup=label,
                    showlegend=column == 0,
                    marker=dict(symbol="star" if filled else "star-open", size=14, color="black"),
                ),
                row=1,
                col=column + 1,
            )
        axis.axvline(0, color="grey", linewidth=0.8, linestyle="--")
        axis.set(title=f"{name} ({entry['kind']})", xlabel="net compute saved (%)")
        axis.grid(alpha=0.3)
        figure.add_vline(x=0, line_dash="dash", line_color="grey", row=1, col=column + 1)
        figure.update_xaxes(title_text="net compute saved (%)", row=1, col=column + 1)
    axes[0][0].set_ylabel("top-1 agreement with the model")
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(pyplot.Line2D([], [], marker="x", linestyle="none", color="grey"))
    labels.append(f"certified, δ={delta} (test)")
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(
        f"Early exit: agreement against compute saved net of checks · {metrics['model']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1 - 1.8 / fig.get_figwidth(), 1))
    figure.update_yaxes(title_text="top-1 agreement with the model", row=1, col=1)
    figure.update_layout(
        title=f"Early exit: agreement against net compute saved · {metrics['model']}",
        template="plotly_white",
    )
    return _write(figure, fig, pyplot, out / "early_exit_tradeoff")


def _rows(metrics: dict, out: Path) -> list[Path]:
    go, subplots, pyplot = _libraries()
    histograms = metrics["histograms"]["lenses"]
    names = list(histograms)
    figure = subplots.make_subplots(
        rows=1, cols=len(names), shared_yaxes=True, subplot_titles=names
    )
    fig, axes = pyplot.subplots(
        1, len(names), figsize=(4.2 * len(names) + 1.9, 3.8), dpi=120, sharey=True, squeeze=False
    )
    colors = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    measures = list(metrics["measures"])
    for column, name in enumerate(names):
        axis = axes[0][column]
        for which, counts in histograms[name].items():
            total = sum(counts) or 1
            shares = [c / total for c in counts]
            rows = list(range(len(counts)))
            if which == "oracle":
                axis.bar(
                    rows,
                    shares,
                    color="lightgrey",
                    edgecolor="grey",
                    label="oracle (prediction depth)",
                )
                figure.add_trace(
                    go.Bar(
                        x=rows,
                        y=shares,
                        name="oracle",
                        legendgroup="oracle",
                        marker_color="lightgrey",
                        showlegend=column == 0,
                    ),
                    row=1,
                    col=column + 1,
                )
                continue
            color = colors[measures.index(which) % len(colors)] if which in measures else None
            edges = [row - 0.5 for row in rows] + [len(rows) - 0.5]
            axis.stairs(shares, edges, color=color, label=which, linewidth=1.4)
            figure.add_trace(
                go.Scatter(
                    x=rows,
                    y=shares,
                    mode="lines",
                    line_shape="hvh",
                    name=which,
                    legendgroup=which,
                    showlegend=column == 0,
                ),
                row=1,
                col=column + 1,
            )
        # Most tokens of a cautious rule never exit: a log scale keeps the early rows visible.
        axis.set(
            title=name,
            xlabel=f"exit row (output = {metrics['output_row']})",
            yscale="log",
            ylim=(0.5 / max(metrics["tokens"], 1), 1.5),
        )
        axis.grid(alpha=0.3)
        figure.update_xaxes(title_text="exit row", row=1, col=column + 1)
    axes[0][0].set_ylabel("share of tokens")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    delta = f"{metrics['histograms']['delta']:g}"
    fig.suptitle(
        f"Where tokens exit: the oracle, and each measure certified for δ={delta}", fontsize=10
    )
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / fig.get_figwidth(), 1))
    figure.update_yaxes(title_text="share of tokens", type="log", row=1, col=1)
    figure.update_yaxes(type="log")
    figure.update_layout(
        title=f"Where tokens exit (certified for δ={delta}) · {metrics['model']}",
        template="plotly_white",
        barmode="overlay",
    )
    return _write(figure, fig, pyplot, out / "early_exit_rows")


def _write(figure, fig, pyplot, stem: Path) -> list[Path]:
    html, png = stem.with_suffix(".html"), stem.with_suffix(".png")
    figure.write_html(html, include_plotlyjs=True, full_html=True)
    fig.savefig(png)
    pyplot.close(fig)
    return [png, html]


__all__ = ["save_early_exit_figures"]
