"""``tunedlens eval``: exact per-layer metrics of lenses against the logit lens, with reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tunedlens.cli.options import DtypeOption, ModelArg, StrictOption


def eval_command(
    model: ModelArg,
    lens: Annotated[
        Optional[list[str]],
        typer.Option(help="Tuned lens directory or hub location; repeat to compare several."),
    ] = None,
    data: Annotated[
        str,
        typer.Option(
            help="Text: .txt/.jsonl[.gz]/.parquet file or directory, hf:NAME[:CONFIG][@REV], or "
            "'stdlib'."
        ),
    ] = "stdlib",
    text_column: Annotated[str, typer.Option(help="Text column of .jsonl/.parquet data.")] = "text",
    tokens: Annotated[int, typer.Option(help="Tokens to evaluate on.")] = 8192,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = 512,
    out: Annotated[Path, typer.Option(help="Directory for the reports.")] = Path("eval"),
    prompts: Annotated[
        Optional[str],
        typer.Option(help="Prompt-suite JSONL for the KPIs and gates; 'none' to skip."),
    ] = "default",
    transfer: Annotated[
        bool, typer.Option(help="Also measure translator i on layer j (L x L times the work).")
    ] = False,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples for the 95% intervals.")
    ] = 1000,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for the data order and bootstrap.")] = 0,
    plots: Annotated[bool, typer.Option(help="Write PNG and HTML figures (extra 'plot').")] = True,
    dtype: DtypeOption = "float32",
    strict: StrictOption = True,
):
    """Evaluate lenses on MODEL layer by layer (the logit lens is always the baseline)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from tunedlens.data import TextSource, pack_blocks
    from tunedlens.evaluation import evaluate, load_prompts
    from tunedlens.lenses.lens import TunedLens
    from tunedlens.models import load_model

    if tokens < seq_len or seq_len < 2:
        raise ValueError(
            f"--tokens ({tokens}) must hold at least one sequence of --seq-len ({seq_len}) tokens"
        )
    suite = None if prompts in (None, "none") else load_prompts(prompts)
    loaded, tokenizer = load_model(model, dtype=dtype)
    named = {}
    for path in lens or []:
        name = Path(path.rstrip("/")).name or path
        while name in named or name == "logit":
            name += "'"
        named[name] = TunedLens.load(path, loaded, strict=strict)
    blocks = pack_blocks(
        TextSource(data, text_column=text_column),
        tokenizer,
        seq_len=seq_len,
        n_sequences=tokens // seq_len,
        seed=seed,
    )
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]eval"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} tokens"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
    ) as bar:  # fmt: skip
        task = bar.add_task("eval", total=blocks.n_tokens)
        report = evaluate(
            loaded,
            named,
            blocks.tokens,
            tokenizer=tokenizer,
            prompts=suite,
            transfer=transfer,
            batch_size=batch_size,
            bootstrap=bootstrap,
            seed=seed,
            progress=lambda done, total: bar.update(task, completed=done),
            model_name=model,
        )
    report.metrics["data"] = {"spec": data, "content_hash": blocks.content_hash()}
    written = report.save(out, plots=plots)
    typer.echo((out / "summary.md").read_text())
    typer.echo(f"wrote {len(written)} files to {out}")
