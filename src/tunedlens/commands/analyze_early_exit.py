"""``tunedlens analyze early-exit``: how much compute a lens lets a model skip, and what it costs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from tunedlens.analyze.errors import AnalysisError
from tunedlens.analyze.exit_analysis import EarlyExitReport, check_early_exit_args, early_exit
from tunedlens.analyze.exit_report import EARLY_EXIT_OUTPUT
from tunedlens.analyze.exit_rules import MEASURE_NAMES, MEASURES
from tunedlens.commands.common import open_model_and_lenses
from tunedlens.data import TextSource, pack_blocks
from tunedlens.outputs import check_out_dir, local_inputs, staged_output

_TOKENIZER_AT_LOAD = object()


def parse_thresholds(specs: Sequence[str]) -> dict[str, list[float]]:
    """``["max-prob=0.5,0.9", "entropy=1"]`` -> ``{"max-prob": [0.5, 0.9], "entropy": [1.0]}``.

    Ranges are checked by :func:`~tunedlens.analyze.exit_analysis.check_early_exit_args`.
    """
    thresholds: dict[str, list[float]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if not sep or not values.strip():
            raise AnalysisError(
                f"--threshold {spec!r} must be MEASURE=VALUE[,VALUE...], e.g. max-prob=0.5,0.9"
            )
        if name not in MEASURES:
            raise AnalysisError(
                f"--threshold {spec!r}: unknown measure {name!r}; choose from "
                f"{', '.join(MEASURE_NAMES)}"
            )
        if name in thresholds:
            raise AnalysisError(f"--threshold gives {name} twice; list its values in one option")
        parsed = []
        for value in values.split(","):
            try:
                number = float(value)
            except ValueError:
                raise AnalysisError(
                    f"--threshold {spec!r}: {value.strip()!r} is not a number"
                ) from None
            if number.is_integer() and MEASURES[name].direction == "at-least":
                number = int(number)
            parsed.append(number)
        thresholds[name] = parsed
    return thresholds


def parse_rows(spec: str | None) -> list[int] | None:
    """``"15,20,24"`` -> ``[15, 20, 24]`` (``None`` stays ``None``)."""
    if spec is None:
        return None
    try:
        rows = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        raise AnalysisError(
            f"--check-rows {spec!r} must be row numbers separated by commas, e.g. 15,20,24"
        ) from None
    if not rows:
        raise AnalysisError("--check-rows is empty; give row numbers, e.g. 15,20,24")
    return rows


def run(
    model_spec: str,
    *,
    data: str,
    lenses: Sequence[str] = (),
    out: str | os.PathLike = "early-exit",
    tokens: int = 2048,
    seq_len: int = 256,
    text_column: str = "text",
    measures: Sequence[str] | None = None,
    thresholds: Sequence[str] = (),
    check_every: int | None = None,
    check_rows: str | None = None,
    deltas: Sequence[float] = (0.05, 0.10),
    epsilon: float = 0.05,
    bound: str = "auto",
    generate: int = 0,
    prompts: int = 4,
    prompt_tokens: int = 16,
    generate_delta: float | None = None,
    batch_size: int = 1,
    seed: int = 0,
    plots: bool = True,
    force: bool = False,
    dtype: str = "float32",
    device: str | None = None,
    tokenizer: str | None = None,
    strict: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[EarlyExitReport, Path]:
    """Read ``tokens`` tokens of ``data`` through every lens, then write the report to ``out``.

    Every argument that needs no model is checked first (measures, thresholds against each
    measure's range, δ and ε in (0, 1), the check schedule, sizes, ``--out``); check rows
    against the model's depth once it is loaded. Returns the report and where it was written.
    """
    measures = tuple(measures) if measures else MEASURE_NAMES
    parsed = parse_thresholds(thresholds)
    rows = parse_rows(check_rows)
    if rows is not None and check_every is not None:
        raise AnalysisError(
            "--check-every and --check-rows both set the check schedule; pass one of them"
        )
    for name, value, least in (
        ("--tokens", tokens, 2),
        ("--seq-len", seq_len, 2),
        ("--check-every", 1 if check_every is None else check_every, 1),
        ("--batch-size", batch_size, 1),
        ("--generate", generate, 0),
        ("--prompts", prompts, 1),
        ("--prompt-tokens", prompt_tokens, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise AnalysisError(f"{name} must be an integer >= {least}, got {value!r}")
    for name, values in (("--delta", deltas), ("--epsilon", [epsilon])):
        for value in values:
            if not (isinstance(value, (int, float)) and 0 < value < 1):
                raise AnalysisError(f"{name} must lie strictly between 0 and 1, got {value!r}")
    if tokens < seq_len:
        raise AnalysisError(
            f"--tokens ({tokens}) is shorter than one sequence (--seq-len {seq_len}); "
            "raise --tokens or lower --seq-len"
        )
    if generate_delta is not None and generate_delta not in deltas:
        raise AnalysisError(
            f"--generate-delta {generate_delta:g} must be one of the --delta values "
            f"{', '.join(f'{d:g}' for d in deltas)}"
        )
    if generate and prompt_tokens >= seq_len:
        raise AnalysisError(
            f"--prompt-tokens ({prompt_tokens}) must be shorter than --seq-len ({seq_len}): "
            "prompts are the first tokens of test sequences"
        )
    # The tokenizer is checked when the model loads (the text needs one anyway): a stand-in
    # lets the generation options be checked before that.
    check_early_exit_args(
        measures=measures,
        thresholds=parsed,
        check_every=1 if check_every is None else check_every,
        check_rows=rows,
        deltas=deltas,
        epsilon=epsilon,
        bound=bound,
        generate=generate,
        tokenizer=_TOKENIZER_AT_LOAD if generate else None,
        n_prompts=prompts,
        prompt_tokens=prompt_tokens,
        batch_size=batch_size,
    )
    out = check_out_dir(
        out,
        EARLY_EXIT_OUTPUT,
        force=force,
        sources=local_inputs(model_spec, data, *lenses, tokenizer),
    )
    source = TextSource(data, text_column)
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
    n_blocks = opened.model.config.get_text_config().num_hidden_layers
    outside = sorted(row for row in rows or () if not 0 <= row < n_blocks)
    if outside:
        raise AnalysisError(
            f"--check-rows {', '.join(map(str, outside))}: outside 0..{n_blocks - 1} (a token is "
            f"checked at the input of a block; row {n_blocks} is the model's own output)"
        )
    ids = pack_blocks(
        source,
        opened.tokenizer,
        seq_len=seq_len,
        n_sequences=tokens // seq_len,
        seed=seed,
        size_options="--tokens",
    ).tokens
    report = early_exit(
        opened.model,
        opened.lenses,
        ids,
        measures=measures,
        thresholds=parsed or None,
        check_every=1 if check_every is None else check_every,
        check_rows=rows,
        deltas=deltas,
        epsilon=epsilon,
        bound=bound,
        generate=generate,
        tokenizer=opened.tokenizer,
        n_prompts=prompts,
        prompt_tokens=prompt_tokens,
        generate_delta=generate_delta,
        batch_size=batch_size,
        progress=progress,
        model_name=model_spec,
    )
    report.metrics["data"] = {"source": data, "tokens": tokens, "seq_len": seq_len, "seed": seed}
    with staged_output(out, EARLY_EXIT_OUTPUT) as staging:
        report.save(staging, plots=plots, force=True)
    return report, out
