"""``tunedlens analyze prune``: which blocks can go — cheap scores against the measured truth."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from tunedlens.analyze.errors import AnalysisError
from tunedlens.analyze.pruning import PruneReport, check_prune_args, prune
from tunedlens.commands.common import open_model_and_lenses
from tunedlens.data import TextSource, pack_blocks
from tunedlens.outputs import OutputKind, check_out_dir, local_inputs, staged_output
from tunedlens.plot.html import BUNDLE_PATTERN, DEFAULT_PLOTLY, check_plotly_mode

PRUNE_OUTPUT = OutputKind(
    "a pruning report",
    (
        "prune.json",
        "prune_summary.md",
        "prune_*.csv",
        "prune_*.png",
        "prune_*.html",
        BUNDLE_PATTERN,
    ),
)
"""What ``analyze prune`` writes into its ``--out`` (what ``--force`` may replace)."""


def same_data(first: str, second: str) -> bool:
    """Whether two data specs name the same text (the same file or folder, however written)."""
    if first == second:
        return True
    a, b = Path(first), Path(second)
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def run(
    model_spec: str,
    *,
    data: str,
    test_data: str,
    lenses: Sequence[str] = (),
    out: str | os.PathLike = "prune",
    max_remove: int = 4,
    tokens: int = 2048,
    test_tokens: int = 2048,
    seq_len: int = 256,
    text_column: str = "text",
    allow_same_data: bool = False,
    oracle: str = "static",
    heal: bool = True,
    generation_prompts: int | None = None,
    lens_positions: int | None = 32,
    batch_size: int = 4,
    seed: int = 0,
    plots: bool = True,
    plotly: str = DEFAULT_PLOTLY,
    force: bool = False,
    dtype: str = "float32",
    device: str | None = None,
    tokenizer: str | None = None,
    strict: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[PruneReport, Path]:
    """Score every block on ``data``, measure removals on ``test_data``, write the report to ``out``.

    Arguments that need no model are checked first (``max_remove < 1``, the same data for both
    without ``allow_same_data``, sizes, ``--out``); ``max_remove`` against the model's depth and
    the data's length once they are known. Returns the report and where it was written.
    """
    check_plotly_mode(plotly)
    if isinstance(max_remove, bool) or not isinstance(max_remove, int) or max_remove < 1:
        raise AnalysisError(f"--max-remove must be an integer >= 1, got {max_remove!r}")
    if not allow_same_data and same_data(data, test_data):
        raise AnalysisError(
            f"--data and --test-data are the same ({data}): the scores would be judged on the text "
            "they were computed from; pass held-out test text, or --allow-same-data to accept it"
        )
    for name, value in (("--tokens", tokens), ("--test-tokens", test_tokens)):
        if value < seq_len:
            raise AnalysisError(f"{name} ({value}) must hold at least one --seq-len ({seq_len})")
    if seq_len < 2 or batch_size < 1:
        raise AnalysisError(
            f"need --seq-len >= 2 and --batch-size >= 1, got {seq_len}, {batch_size}"
        )
    out = check_out_dir(
        out,
        PRUNE_OUTPUT,
        force=force,
        sources=local_inputs(model_spec, data, test_data, *lenses, tokenizer),
    )
    sources = [TextSource(spec, text_column) for spec in (data, test_data)]
    for source in sources:
        source.check()
    opened = open_model_and_lenses(
        model_spec,
        lenses,
        dtype=dtype,
        device=device,
        tokenizer=tokenizer,
        strict=strict,
        with_logit=False,
    )
    calibration, test = (
        pack_blocks(
            source, opened.tokenizer, seq_len=seq_len, n_sequences=count // seq_len, seed=seed
        ).tokens
        for source, count in zip(sources, (tokens, test_tokens), strict=True)
    )
    n_blocks = opened.model.config.get_text_config().num_hidden_layers
    check_prune_args(
        calibration,
        test,
        max_remove=max_remove,
        n_blocks=n_blocks,
        lens_names=("logit", *opened.lenses),
        allow_same_data=allow_same_data,
        oracle=oracle,
        heal=("gromov",) if heal else (),
        generation_prompts=generation_prompts,
        lens_positions=lens_positions,
        batch_size=batch_size,
    )
    report = prune(
        opened.model,
        calibration,
        test_ids=test,
        lenses=opened.lenses,
        max_remove=max_remove,
        allow_same_data=allow_same_data,
        oracle=oracle,
        heal=("gromov",) if heal else (),
        generation_prompts=generation_prompts,
        lens_positions=lens_positions,
        batch_size=batch_size,
        progress=progress,
        model_name=model_spec,
    )
    report.data["data"] = {"calibration": data, "test": test_data, "seq_len": seq_len}
    with staged_output(out, PRUNE_OUTPUT) as staging:
        report.save(staging, plots=plots, plotly=plotly)
    return report, out
