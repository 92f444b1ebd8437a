"""Evaluation figures: KL, entropy and cosine to the model's logits against depth, per lens.

Each figure is written twice: self-contained HTML (plotly, its JavaScript embedded, so it opens
offline) and a PNG (matplotlib) for papers.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from tunedlens.errors import require

# (metric key in metrics.json, title, y-axis label)
FIGURES = {
    "kl": ("kl_bits", "KL(model ‖ lens) by depth", "KL (bits)"),
    "entropy": ("entropy_bits", "Entropy of the lens's prediction by depth", "entropy (bits)"),
    "cos_to_final": ("cos_to_final", "Cosine of lens logits to the model's", "cosine (centred)"),
}
CROSSINGS = (10, 5, 1)


def _crossings(metrics: dict, name: str) -> dict[int, float]:
    """Median first layer (over prompts) where the answer reaches rank ≤ k, per k."""
    firsts = metrics.get("kpis", {}).get(name, {}).get("first_layer", {})
    out = {}
    for k in CROSSINGS:
        values = [v for v in firsts.get(f"rank_le_{k}", []) if v is not None]
        if values:
            out[k] = statistics.median(values)
    return out


def save_eval_figures(metrics: dict, out: Path) -> list[Path]:
    """Write ``{kl,entropy,cos_to_final}.{html,png}`` into ``out``; returns the paths."""
    go = require("plotly.graph_objects", "plot", pip_name="plotly")
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg", force=False)
    pyplot = require("matplotlib.pyplot", "plot", pip_name="matplotlib")
    layers = metrics["layers"]
    written = []
    for stem, (key, title, label) in FIGURES.items():
        figure = go.Figure()
        fig, axis = pyplot.subplots(figsize=(7, 4), dpi=120)
        for name, entry in metrics["lenses"].items():
            figure.add_trace(go.Scatter(x=layers, y=entry[key], mode="lines+markers", name=name))
            (line,) = axis.plot(layers, entry[key], marker=".", label=name)
            if stem != "kl":
                continue
            for step, (k, layer) in enumerate(_crossings(metrics, name).items()):
                figure.add_vline(
                    x=layer,
                    line_dash="dot",
                    line_color=None,
                    opacity=0.4,
                    annotation_text=f"{name}: rank≤{k}",
                )
                axis.axvline(layer, linestyle=":", color=line.get_color(), alpha=0.6)
                low, high = axis.get_ylim()
                axis.annotate(
                    f"rank≤{k}",
                    (layer, high - (0.05 + 0.06 * step) * (high - low)),
                    fontsize=7,
                    color=line.get_color(),
                    va="top",
                    ha="right",
                )
        if stem == "entropy" and "baseline" in metrics:
            value = metrics["baseline"]["entropy_bits"]
            figure.add_hline(y=value, line_dash="dash", annotation_text="model")
            axis.axhline(value, linestyle="--", color="grey", label="model")
        figure.update_layout(
            title=f"{title} · {metrics['model']}",
            xaxis_title="row",
            yaxis_title=label,
            template="plotly_white",
        )
        if metrics.get("points", "block") != "block":
            figure.update_xaxes(tickvals=layers, ticktext=metrics["row_labels"])
        html = out / f"{stem}.html"
        figure.write_html(html, include_plotlyjs=True, full_html=True)
        axis.set(title=title, xlabel="row", ylabel=label)
        if metrics.get("points", "block") != "block":  # sub-layer rows: name them (3, 3.mid, ...)
            ticks = list(range(0, len(layers), max(1, len(layers) // 16)))
            axis.set_xticks(
                [layers[i] for i in ticks],
                [metrics["row_labels"][i] for i in ticks],
                rotation=45,
                fontsize=7,
            )
        axis.legend(fontsize=8)
        fig.tight_layout()
        png = out / f"{stem}.png"
        fig.savefig(png)
        pyplot.close(fig)
        written += [html, png]
    return written
