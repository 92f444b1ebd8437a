"""Pruning figures: cross-entropy against blocks removed per method, and Gromov's heatmap.

Each figure is written twice: HTML (plotly; plotly.js shared per folder, see
:mod:`tunedlens.plot.html`) and a PNG (matplotlib). The functions take the plain dict of a
pruning report.
"""

from __future__ import annotations

from pathlib import Path

from tunedlens.errors import require
from tunedlens.plot.html import DEFAULT_PLOTLY, write_html

DODGE = 0.04
"""Sideways offset between methods in the PNG curves (in blocks)."""


def _style(name: str) -> dict:
    """Line style by kind of method: truncations dashed, the oracle black and dotted."""
    if name.startswith("truncate/"):
        return {"linestyle": "--", "marker": "s"}
    if name.startswith("oracle"):
        return {"linestyle": ":", "marker": "x", "color": "black"}
    if name == "gromov":
        return {"linestyle": "-", "marker": "D", "linewidth": 2.0}
    return {"linestyle": "-", "marker": "o"}


def _same_curves(curves: dict) -> list[tuple[list[str], list[dict]]]:
    """Methods that removed the same blocks at every ``k`` drawn once, under all their names."""
    groups: dict[tuple, tuple[list[str], list[dict]]] = {}
    for name, curve in curves.items():
        key = (name.startswith("truncate/") and name, *(tuple(p["removed"]) for p in curve))
        groups.setdefault(key, ([], curve))[0].append(name)
    return list(groups.values())


def _plotly_dash(style: dict) -> str:
    return {"--": "dash", ":": "dot"}.get(style["linestyle"], "solid")


def _pyplot():
    matplotlib = require("matplotlib", "plot")
    matplotlib.use("Agg", force=False)
    return require("matplotlib.pyplot", "plot", pip_name="matplotlib")


def save_curves(data: dict, out: Path, *, plotly: str = DEFAULT_PLOTLY) -> list[Path]:
    """``prune_curves.{html,png}``: test cross-entropy against ``k``, one line per method."""
    go = require("plotly.graph_objects", "plot", pip_name="plotly")
    pyplot = _pyplot()
    matplotlib_colors = require("matplotlib.colors", "plot", pip_name="matplotlib")
    title = f"Cross-entropy with k of {data['n_blocks']} blocks removed · {data['model']}"
    figure = go.Figure()
    fig, axis = pyplot.subplots(figsize=(9.5, 5), dpi=120)
    colors: dict[str, str] = {}
    groups = _same_curves(data["curves"])
    for index, (names, curve) in enumerate(groups):
        label = " = ".join(names)
        ks = [point["k"] for point in curve]
        ce = [point["ce_bits"] for point in curve]
        hover = [f"removed: {', '.join(map(str, p['removed'])) or 'none'}" for p in curve]
        style = _style(names[0])
        # Methods often agree at some k: dodge each sideways so no line hides another.
        dodge = DODGE * (index - (len(groups) - 1) / 2)
        (line,) = axis.plot([k + dodge for k in ks], ce, label=label, markersize=4, **style)
        color = matplotlib_colors.to_hex(line.get_color())
        colors.update(dict.fromkeys(names, color))
        figure.add_trace(
            go.Scatter(
                x=ks,
                y=ce,
                mode="lines+markers",
                name=label,
                text=hover,
                line={"dash": _plotly_dash(style), "color": color},
            )
        )
    for name, heal in data.get("heal", {}).items():
        k, value = heal["k"], heal["after"]["ce_bits"]
        color = colors.get(name, "black")
        figure.add_trace(
            go.Scatter(
                x=[k],
                y=[value],
                mode="markers",
                name=f"{name} + heal",
                marker={"symbol": "star", "size": 14, "color": color, "line": {"width": 1}},
            )
        )
        axis.plot(
            [k],
            [value],
            marker="*",
            markersize=13,
            linestyle="none",
            color=color,
            markeredgecolor="black",
            markeredgewidth=0.6,
            label=f"{name} + heal",
        )
    baseline = data["baseline"]["ce_bits"]
    figure.add_hline(y=baseline, line_dash="dash", annotation_text="full model")
    axis.axhline(baseline, color="0.5", linestyle="-", linewidth=0.8, label="full model")
    figure.update_layout(
        title=title,
        xaxis_title="blocks removed (k)",
        yaxis_title="cross-entropy (bits/token, test)",
        template="plotly_white",
    )
    axis.set(
        title=title,
        ylabel="cross-entropy (bits/token, test)",
        xlabel="blocks removed (k; methods shifted slightly sideways to stay visible)",
    )
    axis.set_xticks(range(data["max_remove"] + 1))
    # One method (often truncation by the logit lens) can be far worse than the rest: clip the
    # y-axis at the 90th percentile so the others stay readable.
    values = sorted(p["ce_bits"] for c in data["curves"].values() for p in c)
    low, top = min(values[0], baseline), values[int(0.9 * (len(values) - 1))]
    if values[-1] > top + 2 * (top - low):
        span = max(top - low, 1e-6)
        axis.set_ylim(low - 0.05 * span, top + 0.3 * span)
        axis.text(
            0.01,
            0.99,
            "y-axis clipped at the 90th percentile (the HTML shows every point)",
            transform=axis.transAxes,
            fontsize=7,
            va="top",
            color="grey",
        )
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.grid(alpha=0.3)
    fig.tight_layout()
    html, png = out / "prune_curves.html", out / "prune_curves.png"
    written = write_html(figure, html, title=f"pruning curves · {data['model']}", plotly=plotly)
    fig.savefig(png)
    pyplot.close(fig)
    return [*written, png]


def save_heatmap(data: dict, out: Path, *, plotly: str = DEFAULT_PLOTLY) -> list[Path]:
    """``prune_angular.{html,png}``: angular distance of every run of ``n`` blocks from ``ℓ``.

    Left: at the last token of each sequence (Gromov et al.); right: over every token. The
    cross on each column up to ``K`` marks the run Gromov's method removes.
    """
    go = require("plotly.graph_objects", "plot", pip_name="plotly")
    subplots = require("plotly.subplots", "plot", pip_name="plotly")
    pyplot = _pyplot()
    n_blocks, k_max = data["n_blocks"], data["max_remove"]
    panels = {
        "last token": data["angular_distance"]["last_token"],
        "all tokens": data["angular_distance"]["all_tokens"],
    }
    # grid[start][n - 1]: rows are the first removed block ℓ, columns the run length n.
    grids = {
        name: [[rows[n][start] for n in range(n_blocks)] for start in range(n_blocks)]
        for name, rows in panels.items()
    }
    chosen = [(int(p["removed"][0]), p["k"]) for p in data["curves"]["gromov"][1:]]
    figure = subplots.make_subplots(
        rows=1, cols=2, subplot_titles=list(grids), horizontal_spacing=0.12
    )
    fig, axes = pyplot.subplots(1, 2, figsize=(11, 4.8), dpi=120)
    for index, (name, grid) in enumerate(grids.items()):
        figure.add_trace(
            go.Heatmap(
                z=grid,
                x=list(range(1, n_blocks + 1)),
                y=list(range(n_blocks)),
                zmin=0,
                colorscale="Viridis",
                colorbar={"x": 0.44 if index == 0 else 1.0, "title": "d/π"},
                hovertemplate="n=%{x}, ℓ=%{y}: %{z:.3f}<extra></extra>",
            ),
            row=1,
            col=index + 1,
        )
        masked = [[float("nan") if v is None else v for v in row] for row in grid]
        image = axes[index].imshow(
            masked,
            origin="lower",
            aspect="auto",
            cmap="viridis",
            extent=(0.5, n_blocks + 0.5, -0.5, n_blocks - 0.5),
        )
        fig.colorbar(image, ax=axes[index], label="angular distance arccos(cos)/π")
        if index == 0:
            axes[0].plot(
                [n for _, n in chosen],
                [s for s, _ in chosen],
                "x",
                color="red",
                label=f"Gromov's run, n ≤ {k_max}",
            )
            axes[0].legend(fontsize=7, loc="upper right")
            figure.add_trace(
                go.Scatter(
                    x=[n for _, n in chosen],
                    y=[s for s, _ in chosen],
                    mode="markers",
                    marker={"symbol": "x", "color": "red"},
                    name="Gromov's run",
                ),
                row=1,
                col=1,
            )
        axes[index].set(
            title=f"angular distance, {name}",
            xlabel="blocks in the run (n)",
            ylabel="first block of the run (ℓ)",
        )
    fig.suptitle(
        f"Angular distance between the input of block ℓ and the output of block ℓ+n−1 · "
        f"{data['model']}",
        fontsize=10,
    )
    fig.tight_layout()
    figure.update_layout(
        title=f"Angular distance d(ℓ, n) · {data['model']}", template="plotly_white"
    )
    figure.update_xaxes(title_text="blocks in the run (n)")
    figure.update_yaxes(title_text="first block of the run (ℓ)")
    html, png = out / "prune_angular.html", out / "prune_angular.png"
    title = f"angular distance · {data['model']}"
    written = write_html(figure, html, title=title, plotly=plotly)
    fig.savefig(png)
    pyplot.close(fig)
    return [*written, png]


def save_prune_figures(data: dict, out: Path, *, plotly: str = DEFAULT_PLOTLY) -> list[Path]:
    """Write both pruning figures into ``out``; returns their paths (plotly.js once)."""
    written = save_curves(data, out, plotly=plotly) + save_heatmap(data, out, plotly=plotly)
    return list(dict.fromkeys(written))
