"""``tunedlens show``: the prediction trajectory of a prompt as a heatmap (HTML or PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunedlens.cli.options import DtypeOption, ModelArg, PromptArg, StrictOption

ALL = ("entropy", "kl", "ce", "max-prob")


def show_command(
    model: ModelArg,
    prompt: PromptArg,
    lens: Annotated[
        Optional[str],
        typer.Option(help="Tuned lens: shown beside the logit lens. Default: logit lens only."),
    ] = None,
    stat: Annotated[
        str, typer.Option(help="entropy, kl, ce, max-prob, rank, or all (the first four).")
    ] = "entropy",
    compare: Annotated[
        Optional[str],
        typer.Option(help="A second prompt of the same token length: show where they differ."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Figure file: .html (interactive) or .png.")] = Path(
        "lens.html"
    ),
    stride: Annotated[int, typer.Option(help="Show every N-th layer (the last is kept).")] = 1,
    last: Annotated[
        Optional[int], typer.Option(help="Show only the last N positions of the prompt.")
    ] = None,
    dtype: DtypeOption = "float32",
    strict: StrictOption = True,
):
    """Draw what each layer predicts at each position of PROMPT (logit lens, tuned lens)."""
    from tunedlens.lenses.lens import LogitLens, TunedLens
    from tunedlens.models import load_model
    from tunedlens.plot.trajectory_figures import save
    from tunedlens.view.notebook import Lensed

    if out.suffix.lower() not in (".html", ".png"):
        raise ValueError(f"--out must end in .html or .png, got {out.name!r}")
    names = ALL if stat == "all" else (stat,)
    loaded, tokenizer = load_model(model, dtype=dtype)
    viewer = Lensed(loaded, tokenizer)
    lenses = [LogitLens(loaded)]
    if lens:
        lenses.append(TunedLens.load(lens, loaded, strict=strict))

    def view(text: str, chosen):
        trajectory = viewer.trajectory(text, chosen)
        if last is not None:
            trajectory = trajectory.slice_positions(slice(-last, None))
        return trajectory.stride(stride)

    trajectories = [view(prompt, chosen) for chosen in lenses]
    for name in names:  # an unknown statistic fails here, before any drawing
        trajectories[0].stat(name)
    if compare is None:
        stats = [t.stat(name) for name in names for t in trajectories]
        titles = [f"{t.name}: {s.name} ({s.units})" for s, t in
                  zip(stats, [t for _ in names for t in trajectories], strict=True)]  # fmt: skip
    else:
        others = [view(compare, chosen) for chosen in lenses]
        stats = [
            first.difference(second) for first, second in zip(trajectories, others, strict=True)
        ]
        titles = [f"{t.name}: JS divergence between the two prompts (bits)" for t in trajectories]
    save(stats, out, titles, columns=len(lenses), title=f"{model}: {prompt!r}")
    typer.echo(f"wrote {out}")
