"""``tunedlens show``: a prompt's trajectories through several lenses, drawn side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunedlens.commands.common import open_model_and_lenses
from tunedlens.engine.stats import ALL_VIEW_STATS, VIEW_STATS, check_stats
from tunedlens.errors import InputError
from tunedlens.outputs import check_out_file
from tunedlens.plot.html import DEFAULT_PLOTLY, check_plotly_mode
from tunedlens.plot.trajectory_figures import save
from tunedlens.view.notebook import Lensed

FIGURE_SUFFIXES = (".html", ".png")


def run(
    model_spec: str,
    prompt: str,
    *,
    lenses: Sequence[str] = (),
    stat: str = "entropy",
    compare: str | None = None,
    out: str | Path = "lens.html",
    stride: int = 1,
    last: int | None = None,
    dtype: str = "float32",
    device: str | None = None,
    tokenizer: str | None = None,
    strict: bool = True,
    points: str | None = None,
    plotly: str = DEFAULT_PLOTLY,
) -> Path:
    """Draw PROMPT's trajectory through the logit lens and each of ``lenses`` into ``out``.

    Args:
        model_spec: Anything :func:`tunedlens.load_model` accepts.
        prompt: The text.
        lenses: Lens locations (:func:`tunedlens.load_lens`), shown beside the logit lens.
        stat: A name from ``VIEW_STATS``, or ``all`` (the first four).
        compare: A second prompt of the same token length: draw where the two differ.
        out: ``.html`` (interactive) or ``.png``.
        stride: Every N-th layer (the last layer and the output row are kept).
        last: Only the last N positions.
        dtype: Model dtype.
        device: Where to run the model.
        tokenizer: A tokenizer to use instead of the model's own files.
        strict: Refuse a lens whose unembedding fingerprint differs from the model's.
        points: Where the logit lens reads (``block``, ``mid``, ``both``); default: the points
            of the other lenses. Rows are interleaved (``3``, ``3.mid``) for ``both``.
        plotly: How an HTML page gets plotly.js (:data:`tunedlens.plot.html.PLOTLY_MODES`).

    Returns:
        The path written.
    """
    out = check_out_file(out, FIGURE_SUFFIXES)
    check_plotly_mode(plotly)
    names = ALL_VIEW_STATS if stat == "all" else check_stats(stat, VIEW_STATS, "--stat")
    if isinstance(stride, bool) or stride < 1:
        raise InputError(f"--stride must be an integer >= 1, got {stride!r}")
    if last is not None and last < 1:
        raise InputError(f"--last must be an integer >= 1, got {last!r}")
    opened = open_model_and_lenses(
        model_spec,
        lenses,
        dtype=dtype,
        device=device,
        tokenizer=tokenizer,
        strict=strict,
        points=points,
    )
    viewer = Lensed(opened.model, opened.tokenizer)
    chosen = opened.lenses

    def view(text: str, lens):
        trajectory = viewer.trajectory(text, lens)
        if last is not None:
            trajectory = trajectory.slice_positions(slice(-last, None))
        return trajectory.stride(stride)

    trajectories = [view(prompt, lens) for lens in chosen.values()]
    labels = [
        f"{lens.kind} lens" if name == lens.kind else f"{lens.kind} lens {name}"
        for name, lens in chosen.items()
    ]
    if compare is None:
        stats = [t.stat(name) for name in names for t in trajectories]
        titles = [
            f"{label}: {s.name} ({s.units})"
            for s, label in zip(stats, [lb for _ in names for lb in labels], strict=True)
        ]
    else:
        others = [view(compare, lens) for lens in chosen.values()]
        stats = [
            first.difference(second) for first, second in zip(trajectories, others, strict=True)
        ]
        titles = [f"{label}: JS divergence between the two prompts (bits)" for label in labels]
    title = f"{model_spec}: {prompt!r}"
    return save(stats, out, titles, columns=len(chosen), title=title, plotly=plotly)
