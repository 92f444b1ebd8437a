"""Evaluation figures: KL, entropy and cosine to the model's logits against depth, per lens.

Each figure is written twice: an HTML page (plotly; plotly.js shared per folder, see
:mod:`tunedlens.plot.html`) and a PNG (matplotlib) for papers.

KL is drawn on a log axis: the logit lens's first rows (≈150 bits) would otherwise flatten every
curve worth comparing. The median first row where the answer reaches rank ≤ 10, 5 and 1 is
marked on each lens's own curve, one marker shape per k, explained in the legend.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from tunedlens.errors import require
from tunedlens.plot.html import DEFAULT_PLOTLY, write_html

# (metric key in metrics.json, title, y-axis label)
FIGURES = {
    "kl": ("kl_bits", "KL(model ‖ lens) by depth", "KL (bits)"),
    "entropy": ("entropy_bits", "Entropy of the lens's prediction by depth", "entropy (bits)"),
    "cos_to_final": ("cos_to_final", "Cosine of lens logits to the model's", "cosine (centred)"),
}
CROSSINGS = (10, 5, 1)
MARKERS = {10: ("v", "triangle-down", 15, 19), 5: ("D", "diamond", 9, 12), 1: ("*", "star", 7, 8)}
"""Marker of the rank ≤ k crossing, per k: matplotlib and plotly shape, then size in each.

Sizes shrink with k so that crossings of one lens at one row nest (a star inside a diamond
inside a triangle) rather than hide each other."""
KL_FLOOR = 1e-3
"""The smallest KL the log axis shows (bits): the logit lens's output row is exactly 0."""
OUTPUT_LABEL = "output"


def _crossings(metrics: dict, name: str) -> dict[int, float]:
    """Median first layer (over prompts) where the answer reaches rank ≤ k, per k."""
    firsts = metrics.get("kpis", {}).get(name, {}).get("first_layer", {})
    out = {}
    for k in CROSSINGS:
        values = [v for v in firsts.get(f"rank_le_{k}", []) if v is not None]
        if values:
            out[k] = statistics.median(values)
    return out


def _at(layers: list, values: list, x: float) -> float:
    """``values`` linearly interpolated at ``x`` (a median row may fall between two rows)."""
    for i in range(len(layers) - 1):
        x0, x1, y0, y1 = layers[i], layers[i + 1], values[i], values[i + 1]
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return values[-1] if x > layers[-1] else values[0]


def tick_labels(metrics: dict) -> list[str]:
    """The x tick label of each row: its number (or ``3.mid``), the last one ``output``."""
    layers = metrics["layers"]
    labels = list(metrics.get("row_labels") or [str(layer) for layer in layers])
    if labels:
        labels[-1] = OUTPUT_LABEL
    return labels


def _ticks(metrics: dict, limit: int = 16) -> tuple[list, list[str]]:
    """At most about ``limit`` ticks, always including the output row."""
    layers, labels = metrics["layers"], tick_labels(metrics)
    step = max(1, -(-len(layers) // limit))
    keep = list(range(0, len(layers) - 1, step))
    if len(layers) - 1 - keep[-1] < step / 2 and len(keep) > 1:
        keep.pop()  # too close to the output tick to read
    keep.append(len(layers) - 1)
    return [layers[i] for i in keep], [labels[i] for i in keep]


def save_eval_figures(metrics: dict, out: Path, *, plotly: str = DEFAULT_PLOTLY) -> list[Path]:
    """Write ``{kl,entropy,cos_to_final}.{html,png}`` into ``out``; returns the paths.

    With ``plotly="directory"`` the shared plotly.js is among them (once).
    """
    go = require("plotly.graph_objects", "plot", pip_name="plotly")
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg", force=False)
    pyplot = require("matplotlib.pyplot", "plot", pip_name="matplotlib")
    to_hex = require("matplotlib.colors", "plot", pip_name="matplotlib").to_hex
    layers = metrics["layers"]
    tickvals, ticktext = _ticks(metrics)
    written: list[Path] = []
    for stem, (key, title, label) in FIGURES.items():
        log = stem == "kl"
        if log:
            label = f"{label}, log scale; below {KL_FLOOR:g} drawn at {KL_FLOOR:g}"
        figure = go.Figure()
        fig, axis = pyplot.subplots(figsize=(8, 4.5), dpi=120)
        shown_k = set()
        for name, entry in metrics["lenses"].items():
            values = [max(v, KL_FLOOR) if log else v for v in entry[key]]
            (line,) = axis.plot(layers, values, marker=".", label=name)
            colour = to_hex(line.get_color())
            figure.add_trace(
                go.Scatter(
                    x=layers,
                    y=values,
                    mode="lines+markers",
                    name=name,
                    line={"color": colour},
                    legendgroup=name,
                    customdata=entry[key],
                    hovertemplate=f"{name}<br>row %{{x}}: %{{customdata:.4g}}<extra></extra>",
                )
            )
            if stem != "kl":
                continue
            for k, row in _crossings(metrics, name).items():
                shown_k.add(k)
                mpl_marker, plotly_marker, mpl_size, plotly_size = MARKERS[k]
                y = _at(layers, values, row)
                axis.plot(
                    [row],
                    [y],
                    linestyle="none",
                    marker=mpl_marker,
                    markersize=mpl_size,
                    color=colour,
                    markeredgecolor="black",
                    zorder=3 + CROSSINGS.index(k),
                )
                figure.add_trace(
                    go.Scatter(
                        x=[row],
                        y=[y],
                        mode="markers",
                        marker={
                            "symbol": plotly_marker,
                            "size": plotly_size,
                            "color": colour,
                            "line": {"color": "black", "width": 1},
                        },
                        legendgroup=name,
                        showlegend=False,
                        hovertemplate=f"{name}: answer reaches rank ≤ {k} at row {row:g} "
                        "(median over prompts)<extra></extra>",
                    )
                )
        for k in sorted(shown_k, reverse=True):  # legend entries for the marker shapes
            mpl_marker, plotly_marker, mpl_size, plotly_size = MARKERS[k]
            text = f"answer rank ≤ {k} (median first row)"
            axis.plot(
                [],
                [],
                linestyle="none",
                marker=mpl_marker,
                color="white",
                markeredgecolor="black",
                markersize=mpl_size,
                label=text,
            )
            figure.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    name=text,
                    marker={
                        "symbol": plotly_marker,
                        "size": plotly_size,
                        "color": "white",
                        "line": {"color": "black", "width": 1},
                    },
                )
            )
        if stem == "entropy" and "baseline" in metrics:
            value = metrics["baseline"]["entropy_bits"]
            figure.add_hline(y=value, line_dash="dash", annotation_text="model")
            axis.axhline(value, linestyle="--", color="grey", label="model")
        full_title = f"{title} · {metrics['model']}"
        figure.update_layout(
            title=full_title,
            xaxis_title="row (output = the model's own output)",
            yaxis_title=label,
            template="plotly_white",
        )
        figure.update_xaxes(tickvals=tickvals, ticktext=ticktext)
        if log:
            figure.update_yaxes(type="log")
        written += write_html(figure, out / f"{stem}.html", title=full_title, plotly=plotly)
        axis.set(title=title, xlabel="row (output = the model's own output)", ylabel=label)
        if log:
            axis.set_yscale("log")
            axis.yaxis.label.set_fontsize(8)
        axis.set_xticks(tickvals, ticktext, rotation=45 if len(ticktext) > 12 else 0, fontsize=8)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
        fig.tight_layout()
        png = out / f"{stem}.png"
        fig.savefig(png)
        pyplot.close(fig)
        written.append(png)
    return list(dict.fromkeys(written))  # the shared plotly.js once
