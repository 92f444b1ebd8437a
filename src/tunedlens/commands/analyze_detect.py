"""``tunedlens analyze detect``: tell injected prompts from normal ones by their trajectories."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from tunedlens.analyze.detection import DetectReport, check_detect_args, detect
from tunedlens.analyze.detection.report import DETECT_OUTPUT
from tunedlens.commands.common import open_model_and_lenses
from tunedlens.outputs import check_out_dir, local_inputs, staged_output
from tunedlens.plot.html import DEFAULT_PLOTLY, check_plotly_mode


def run(
    model_spec: str,
    *,
    tasks: Sequence[str] = ("capitals",),
    lenses: Sequence[str] = (),
    out: str | os.PathLike = "detect",
    shots: int | None = None,
    features: Sequence[str] | None = None,
    detectors: Sequence[str] | None = None,
    hidden_row: int | None = None,
    items: int | None = None,
    bootstrap: int = 1000,
    batch_size: int = 8,
    seed: int = 0,
    plots: bool = True,
    plotly: str = DEFAULT_PLOTLY,
    force: bool = False,
    dtype: str = "float32",
    device: str | None = None,
    tokenizer: str | None = None,
    strict: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[DetectReport, Path]:
    """Build each task's prompts, read them through every lens, fit the detectors, write ``out``.

    The tasks, features, detectors, sizes and ``--out`` are checked before the model loads.
    Returns the report and where it was written.
    """
    check_plotly_mode(plotly)
    options = {}
    if features:
        options["features"] = tuple(features)
    if detectors:
        options["detectors"] = tuple(detectors)
    check_detect_args(
        list(tasks),
        shots=shots,
        seed=seed,
        hidden_row=hidden_row,
        n_items=items,
        bootstrap=bootstrap,
        batch_size=batch_size,
        **options,
    )
    out = check_out_dir(
        out,
        DETECT_OUTPUT,
        force=force,
        sources=local_inputs(model_spec, *tasks, *lenses, tokenizer),
    )
    opened = open_model_and_lenses(
        model_spec,
        lenses,
        dtype=dtype,
        device=device,
        tokenizer=tokenizer,
        strict=strict,
        with_logit=False,
    )
    report = detect(
        opened.model,
        opened.tokenizer,
        opened.lenses,
        list(tasks),
        shots=shots,
        seed=seed,
        hidden_row=hidden_row,
        n_items=items,
        bootstrap=bootstrap,
        batch_size=batch_size,
        progress=progress,
        model_name=model_spec,
        **options,
    )
    with staged_output(out, DETECT_OUTPUT) as staging:
        report.save(staging, plots=plots, force=True, plotly=plotly)
    return report, out
