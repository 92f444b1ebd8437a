"""Typer application: ``tunedlens predict``, ``tunedlens lens info``, ``tunedlens lens convert``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunedlens.cli.options import DtypeOption, ModelArg, PromptArg, StrictOption

app = typer.Typer(
    name="tunedlens",
    help="Look inside causal LMs with the logit lens and the tuned lens.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
lens_app = typer.Typer(help="Inspect and convert lens directories.", no_args_is_help=True)
app.add_typer(lens_app, name="lens")


@app.command()
def predict(
    model: ModelArg,
    prompt: PromptArg,
    lens: Annotated[
        Optional[str],
        typer.Option(help="Tuned lens directory (native or tuned-lens); default: logit lens."),
    ] = None,
    layers: Annotated[
        Optional[str], typer.Option(help="Layers to show: 'all', '0,5,10', '4-8' or '0:30:5'.")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Tokens per layer.")] = 5,
    position: Annotated[int, typer.Option(help="Token position; -1 = last.")] = -1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    dtype: DtypeOption = "float32",
    strict: StrictOption = True,
):
    """Print each layer's top-k next tokens (and probabilities) at one position of PROMPT."""
    from tunedlens.lenses.lens import LogitLens, TunedLens
    from tunedlens.models import load_model
    from tunedlens.predict import parse_layers, predict_layers

    loaded, tokenizer = load_model(model, dtype=dtype)
    chosen = TunedLens.load(lens, loaded, strict=strict) if lens else LogitLens(loaded)
    rows = predict_layers(
        loaded,
        tokenizer,
        prompt,
        chosen,
        layers=parse_layers(layers, chosen.n_layers),
        top_k=top_k,
        position=position,
    )
    if as_json:
        payload = {
            "model": model,
            "prompt": prompt,
            "lens": lens or "logit",
            "position": position,
            "layers": [row.to_dict() for row in rows],
        }
        typer.echo(json.dumps(payload, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"{'tuned lens ' + lens if lens else 'logit lens'} · {model} · position {position}"
    )
    table.add_column("layer", justify="right")
    for rank in range(1, len(rows[0].top) + 1):
        table.add_column(f"#{rank}")
    for row in rows:
        cells = [f"{json.dumps(t.token, ensure_ascii=False)} {t.prob:.2f}" for t in row.top]
        table.add_row(str(row.layer), *cells, style="bold" if row.layer == "output" else None)
    Console().print(table)


@app.command()
def train(
    model: ModelArg,
    out: Annotated[
        Path, typer.Option(help="Directory for the lens, checkpoints and train_log.jsonl.")
    ],
    data: Annotated[
        Optional[str],
        typer.Option(
            help="Training text: .txt/.jsonl[.gz]/.parquet file or directory, "
            "hf:NAME[:CONFIG][@REV], or 'stdlib'. Default: stdlib for demo, fineweb-edu otherwise."
        ),
    ] = None,
    val_data: Annotated[
        Optional[str], typer.Option(help="Held-out text (default: held-out blocks of --data).")
    ] = None,
    text_column: Annotated[
        str, typer.Option(help="Text column of .jsonl/.parquet/hub data.")
    ] = "text",
    recipe: Annotated[str, typer.Option(help="default, paper or lowrank.")] = "default",
    tokens: Annotated[Optional[int], typer.Option(help="Training token budget.")] = None,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = 512,
    translator: Annotated[
        Optional[str], typer.Option(help="affine or lowrank (default: the recipe's).")
    ] = None,
    objective: Annotated[Optional[str], typer.Option(help="kl (default) or ce.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per forward pass.")] = None,
    tokens_per_step: Annotated[
        Optional[int], typer.Option(help="Tokens per optimizer step.")
    ] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate.")] = None,
    val_tokens: Annotated[
        Optional[int], typer.Option(help="Held-out tokens for validation.")
    ] = None,
    val_every: Annotated[
        Optional[int], typer.Option(help="Validate every N optimizer steps.")
    ] = None,
    patience: Annotated[
        Optional[int], typer.Option(help="Stop after N validations without improvement.")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed for data order, sampling and initialisation.")
    ] = 0,
    checkpoint_every: Annotated[
        Optional[int], typer.Option(help="Checkpoint every N optimizer steps.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    dtype: Annotated[
        str, typer.Option(help="Model dtype: float32, bfloat16, float16.")
    ] = "float32",
    format: Annotated[
        str, typer.Option("--format", help="Lens format: native or tuned-lens.")
    ] = "native",
):
    """Train a tuned lens for MODEL and save it, with provenance, in --out."""
    from tunedlens.train.config import recipe_config
    from tunedlens.train.distributed import init_world
    from tunedlens.train.run import run_training

    config = recipe_config(
        recipe,
        tokens=tokens,
        seq_len=seq_len,
        translator=translator,
        objective=objective,
        batch_size=batch_size,
        tokens_per_step=tokens_per_step,
        lr=lr,
        val_tokens=val_tokens,
        val_every=val_every,
        patience=patience,
        seed=seed,
        checkpoint_every=checkpoint_every,
    )
    world = init_world()
    from tunedlens.cli.progress import TrainingProgress

    with TrainingProgress(enabled=world.is_primary) as progress:
        result = run_training(
            model,
            config,
            out,
            data=data,
            val_data=val_data,
            text_column=text_column,
            resume=resume,
            dtype=dtype,
            lens_format=format,
            on_step=progress.update,
            on_status=progress.status,
            world=world,
        )
    if world.is_primary:
        progress.summary(result, out)


@lens_app.command("info")
def lens_info(
    path: Annotated[str, typer.Argument(help="Lens directory or hub location.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Describe a lens: format, translator, dimensions, model, provenance, per-layer sizes."""
    from tunedlens.lenses.locations import lens_dir
    from tunedlens.lenses.info import describe_lens

    info = describe_lens(lens_dir(path))
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(show_header=False, title=f"lens {path}")
    for key, value in info.items():
        if key != "layers":
            summary.add_row(
                key, json.dumps(value, default=str) if isinstance(value, dict) else str(value)
            )
    console.print(summary)
    layers = Table(title="translator size per layer (Frobenius norm of the learned update)")
    for column in ("layer", "update_norm", "bias_norm"):
        layers.add_column(column, justify="right")
    for row in info["layers"]:
        layers.add_row(str(row["layer"]), f"{row['update_norm']:.4g}", f"{row['bias_norm']:.4g}")
    console.print(layers)


@lens_app.command("convert")
def lens_convert(
    source: Annotated[Path, typer.Argument(help="Lens directory to read (either format).")],
    target: Annotated[Path, typer.Argument(help="Directory to write.")],
    format: Annotated[str, typer.Option("--format", help="native or tuned-lens.")] = "native",
):
    """Convert a lens between the native format and the reference tuned-lens format."""
    from tunedlens.lenses.files import read_lens, write_lens

    if format not in ("native", "tuned-lens"):
        raise ValueError(f"--format must be 'native' or 'tuned-lens', got {format!r}")
    if source.resolve() == target.resolve():
        raise ValueError("SRC and DST are the same directory; write the converted lens elsewhere.")
    write_lens(read_lens(source), target, format)  # type: ignore[arg-type]
    typer.echo(f"wrote {format} lens to {target}")


from tunedlens.cli.evaluate import eval_command  # noqa: E402
from tunedlens.cli.show import show_command  # noqa: E402

app.command("eval")(eval_command)
app.command("show")(show_command)


def main() -> None:
    """Entry point: run the app, turning expected errors into one clear line and exit code 2."""
    from transformers.utils import logging as hf_logging

    from tunedlens.errors import TunedLensError

    # Per-tensor loading bars and info logs drown the answer of a one-shot command.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    try:
        app()
    except (TunedLensError, ValueError, IndexError) as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
