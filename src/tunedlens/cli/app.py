"""Typer application. Each command parses its options and calls one library function."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunedlens.cli.config_options import train_settings, with_parameters
from tunedlens.cli.help import PlainHelpGroup
from tunedlens.cli.options import (
    DATA_FORMS,
    LENS_HELP,
    PLOTLY_DEFAULT,
    STAT_HELP,
    DeviceOption,
    DtypeOption,
    ModelArg,
    PlotlyOption,
    PointsOption,
    PromptArg,
    SelfBatchSizeOption,
    SelfCacheOption,
    SelfDocTokensOption,
    SelfPrefixOption,
    SelfSeedOption,
    SelfTemperatureOption,
    SelfTokensOption,
    SelfTopPOption,
    StrictOption,
    TokenizerOption,
    self_text_settings,
)
from tunedlens.serialize import dumps
from tunedlens.train.config import RECIPES

app = typer.Typer(
    name="tunedlens",
    help="Look inside causal LMs with the logit lens and the tuned lens.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=PlainHelpGroup,
    rich_markup_mode="rich",
)
lens_app = typer.Typer(
    help="Inspect, convert and merge lenses.", no_args_is_help=True, rich_markup_mode="rich"
)
app.add_typer(lens_app, name="lens")
hub_app = typer.Typer(
    help="Lens collections on the hub: package, verify, upload, download.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(hub_app, name="hub")
analyze_app = typer.Typer(
    help="Uses of lenses: early exit, which blocks can go, anomalous inputs.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
app.add_typer(analyze_app, name="analyze")


def _print_version(value: bool) -> None:
    if not value:
        return
    import platform

    import torch
    import transformers

    from tunedlens.provenance import environment

    typer.echo(
        f"tunedlens {environment()['tunedlens_version']} (torch {torch.__version__}, transformers "
        f"{transformers.__version__}, python {platform.python_version()})"
    )
    raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the versions of tunedlens, torch, transformers and python, then exit.",
        ),
    ] = False,
):
    """Look inside causal LMs with the logit lens and the tuned lens."""


RECIPE_HELP = f"Named settings to start from: {', '.join(sorted(RECIPES))} (see TrainConfig)."


@app.command()
def predict(
    model: ModelArg,
    prompt: PromptArg,
    lens: Annotated[str, typer.Option(help=LENS_HELP)] = "logit",
    layers: Annotated[
        Optional[str],
        typer.Option(
            help="Layers to show: 'all', '0,5,10', '20-29' (both ends included) or '20:30' / "
            "'0:30:5' (a Python slice: the end is excluded). The output row is always shown."
        ),
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Tokens per layer.")] = 5,
    position: Annotated[int, typer.Option(help="Token position; -1 = last.")] = -1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    points: PointsOption = None,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    tokenizer: TokenizerOption = None,
    strict: StrictOption = True,
):
    """Print each layer's top-k next tokens (and probabilities) at one position of PROMPT."""
    from tunedlens.commands import predict as command

    result = command.run(
        model,
        prompt,
        lens=lens,
        layers=layers,
        top_k=top_k,
        position=position,
        dtype=dtype,
        device=device,
        tokenizer=tokenizer,
        strict=strict,
        points=points,
    )
    if as_json:
        typer.echo(dumps(result.to_dict(), ensure_ascii=False))
        return
    from rich.console import Console

    from tunedlens.cli.tables import predict_table

    console = Console()
    console.print(predict_table(result, width=console.width))


@app.command()
def show(
    model: ModelArg,
    prompt: PromptArg,
    lens: Annotated[
        Optional[list[str]],
        typer.Option(help=LENS_HELP + " Repeat to show several beside the logit lens."),
    ] = None,
    stat: Annotated[str, typer.Option(help=STAT_HELP)] = "entropy",
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
    points: PointsOption = None,
    plotly: PlotlyOption = PLOTLY_DEFAULT,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    tokenizer: TokenizerOption = None,
    strict: StrictOption = True,
):
    """Draw what each layer predicts at each position of PROMPT (logit lens beside each lens)."""
    from tunedlens.commands import show as command

    path = command.run(
        model,
        prompt,
        lenses=lens or (),
        stat=stat,
        compare=compare,
        out=out,
        stride=stride,
        last=last,
        dtype=dtype,
        device=device,
        tokenizer=tokenizer,
        strict=strict,
        points=points,
        plotly=plotly,
    )
    typer.echo(f"wrote {path}")


def train(
    ctx: typer.Context,
    model: ModelArg,
    out: Annotated[
        Path, typer.Option(help="Directory for the lens, checkpoints and train_log.jsonl.")
    ],
    data: Annotated[
        Optional[str],
        typer.Option(
            help="Training text: .txt/.jsonl[.gz]/.parquet file or directory, "
            "hf:NAME[:CONFIG][@REV], stdlib, stdlib-prose, kjv, or self (text sampled from the "
            "model, cached: see the --self-* options). Default: self for demo (its first 81,850 "
            "tokens ship with tunedlens), fineweb-edu otherwise."
        ),
    ] = None,
    val_data: Annotated[
        Optional[str], typer.Option(help="Held-out text (default: held-out blocks of --data).")
    ] = None,
    text_column: Annotated[
        str, typer.Option(help="Text column of .jsonl/.parquet/hub data.")
    ] = "text",
    recipe: Annotated[str, typer.Option(help=RECIPE_HELP)] = "default",
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint in --out.")] = False,
    force: Annotated[
        bool, typer.Option(help="Replace the lens, checkpoint and log of another run in --out.")
    ] = False,
    fsdp: Annotated[
        bool,
        typer.Option(
            help="Shard the model's decoder blocks across torchrun processes (FSDP2), each "
            "process loading only its shard."
        ),
    ] = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    tokenizer: TokenizerOption = None,
    format: Annotated[
        str, typer.Option("--format", help="Lens format: native or tuned-lens.")
    ] = "native",
    log_to: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Also log every step to tensorboard (OUT/tensorboard) or wandb (OUT/wandb, offline "
            "unless WANDB_MODE is set); repeatable. train_log.jsonl is always written."
        ),
    ] = None,
    self_tokens: SelfTokensOption = None,
    self_temperature: SelfTemperatureOption = None,
    self_top_p: SelfTopPOption = None,
    self_prefix: SelfPrefixOption = None,
    self_seed: SelfSeedOption = None,
    self_doc_tokens: SelfDocTokensOption = None,
    self_batch_size: SelfBatchSizeOption = None,
    self_cache: SelfCacheOption = None,
    **settings,
):
    """Train a tuned lens for MODEL and save it, with provenance, in --out.

    Every training setting (TrainConfig) is an option; those not given take the recipe's value
    (the demo model trains on 65,536 tokens unless given a token count or a time budget).
    """
    from tunedlens.cli.config_options import explicit_options, given
    from tunedlens.cli.progress import TrainingProgress, interrupted
    from tunedlens.commands import train as command
    from tunedlens.distributed import init_world
    from tunedlens.train.checkpoint import CHECKPOINT_NAME

    config = command.config_from_options(recipe, given(settings, explicit_options(ctx)), model)
    world = init_world(device or "cpu")
    with (
        TrainingProgress(enabled=world.is_primary) as progress,
        interrupted(out, CHECKPOINT_NAME, force=force),
    ):
        result = command.run(
            model,
            config,
            out,
            data=data,
            val_data=val_data,
            text_column=text_column,
            resume=resume,
            force=force,
            dtype=dtype,
            device=device,
            tokenizer=tokenizer,
            lens_format=format,
            fsdp=fsdp,
            on_step=progress.update,
            on_status=progress.status,
            on_progress=progress.phase,
            world=world,
            log_to=log_to or (),
            self_text=self_text_settings(
                self_tokens,
                self_temperature,
                self_top_p,
                self_prefix,
                self_seed,
                self_doc_tokens,
                self_batch_size,
                self_cache,
            ),
            on_sample=progress.sample,
        )
    if world.is_primary:
        progress.summary(result, out)
    world.close()


@app.command("fit-jlens")
def fit_jlens(
    model: ModelArg,
    out: Annotated[Path, typer.Option(help="Directory for the J-lens (native format).")],
    data: Annotated[
        Optional[str],
        typer.Option(
            help="Text to fit on (as for train; self: text sampled from the model, see the "
            "--self-* options). Default: self for demo (its first 81,850 tokens ship with "
            "tunedlens), fineweb-edu otherwise."
        ),
    ] = None,
    text_column: Annotated[str, typer.Option(help="Text column of .jsonl/.parquet data.")] = "text",
    prompts: Annotated[int, typer.Option(help="Prompts (sequences) to average over.")] = 8,
    seq_len: Annotated[int, typer.Option(help="Tokens per prompt.")] = 128,
    skip_first: Annotated[
        int, typer.Option(help="Leading positions left out of the average (attention sinks).")
    ] = 16,
    dim_batch: Annotated[
        int,
        typer.Option(help="Output dimensions per batched backward pass (memory grows with it)."),
    ] = 32,
    seed: Annotated[int, typer.Option(help="Seed for the data order.")] = 0,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    tokenizer: TokenizerOption = None,
    checkpoint_every: Annotated[
        Optional[int],
        typer.Option(help="Save the running sums in --out every this many prompts (resumable)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(help="Continue the fit whose checkpoint is in --out (bit-identical result)."),
    ] = False,
    part: Annotated[
        Optional[str],
        typer.Option(
            help="I/N: fit only slice I (from 0) of N of the prompts; merge the parts "
            "with 'tunedlens lens merge'."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace what --out already holds.")] = False,
    fsdp: Annotated[
        bool,
        typer.Option(
            help="Shard the model's decoder blocks across torchrun processes (FSDP2), each "
            "process loading only its shard."
        ),
    ] = False,
    self_tokens: SelfTokensOption = None,
    self_temperature: SelfTemperatureOption = None,
    self_top_p: SelfTopPOption = None,
    self_prefix: SelfPrefixOption = None,
    self_seed: SelfSeedOption = None,
    self_doc_tokens: SelfDocTokensOption = None,
    self_batch_size: SelfBatchSizeOption = None,
    self_cache: SelfCacheOption = None,
):
    """Fit a Jacobian lens for MODEL (exact estimator: d backward passes per prompt).

    Under torchrun (torchrun --nproc-per-node N -m tunedlens fit-jlens ...) the processes fit
    contiguous slices of the prompts and add their sums at the end; with --fsdp they share
    one sharded copy of the model instead of holding one each.
    """
    from tunedlens.cli.progress import CountProgress, SampleProgress, interrupted
    from tunedlens.commands import fit_jlens as command
    from tunedlens.jacobian.state import STATE_NAME

    with (
        SampleProgress() as sampling,
        CountProgress("fit-jlens", "backward passes") as progress,
        interrupted(out, f"{STATE_NAME}*", force=force),
    ):
        lens = command.run(
            model,
            out,
            data=data,
            text_column=text_column,
            prompts=prompts,
            seq_len=seq_len,
            skip_first=skip_first,
            dim_batch=dim_batch,
            seed=seed,
            dtype=dtype,
            device=device,
            tokenizer=tokenizer,
            checkpoint_every=checkpoint_every,
            resume=resume,
            part=part,
            force=force,
            fsdp=fsdp,
            on_pass=progress.update,
            status=progress.status,
            self_settings=self_text_settings(
                self_tokens,
                self_temperature,
                self_top_p,
                self_prefix,
                self_seed,
                self_doc_tokens,
                self_batch_size,
                self_cache,
            ),
            on_sample=sampling.update,
        )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, the first process speaks for all
        typer.echo(
            f"fitted rows {lens.rows[0]}..{lens.rows[-1]} on {lens.n_prompts} prompts; "
            f"J-lens saved to {out}"
        )


@app.command("eval")
def eval_command(
    model: ModelArg,
    lens: Annotated[
        Optional[list[str]],
        typer.Option(help=LENS_HELP + " Repeat to compare several (the logit lens is always in)."),
    ] = None,
    data: Annotated[
        str,
        typer.Option(
            help="Text: .txt/.jsonl[.gz]/.parquet file or directory, hf:NAME[:CONFIG][@REV], "
            "stdlib, stdlib-prose, kjv, or self (text sampled from the model, cached: see the "
            "--self-* options; another --self-seed than training's holds out new text)."
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
    plotly: PlotlyOption = PLOTLY_DEFAULT,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    tokenizer: TokenizerOption = None,
    strict: StrictOption = True,
    force: Annotated[bool, typer.Option(help="Replace an existing report in --out.")] = False,
    self_tokens: SelfTokensOption = None,
    self_temperature: SelfTemperatureOption = None,
    self_top_p: SelfTopPOption = None,
    self_prefix: SelfPrefixOption = None,
    self_seed: SelfSeedOption = None,
    self_doc_tokens: SelfDocTokensOption = None,
    self_batch_size: SelfBatchSizeOption = None,
    self_cache: SelfCacheOption = None,
):
    """Evaluate lenses on MODEL layer by layer (the logit lens is always the baseline)."""
    from tunedlens.cli.progress import CountProgress, SampleProgress
    from tunedlens.commands import eval as command

    with SampleProgress() as sampling, CountProgress() as progress:
        run = command.run(
            model,
            lens or (),
            data=data,
            text_column=text_column,
            tokens=tokens,
            seq_len=seq_len,
            out=out,
            prompts=prompts,
            transfer=transfer,
            bootstrap=bootstrap,
            batch_size=batch_size,
            seed=seed,
            plots=plots,
            plotly=plotly,
            dtype=dtype,
            device=device,
            tokenizer=tokenizer,
            strict=strict,
            force=force,
            progress=progress.update,
            on_start=progress.start,
            self_settings=self_text_settings(
                self_tokens,
                self_temperature,
                self_top_p,
                self_prefix,
                self_seed,
                self_doc_tokens,
                self_batch_size,
                self_cache,
            ),
            on_sample=sampling.update,
        )
    from rich.console import Console

    from tunedlens.cli.tables import eval_tables, gate_lines, wrapped

    metrics = run.report.metrics
    console = Console()
    typer.echo(
        wrapped(
            f"{metrics['model']}: {metrics['tokens']:,} tokens; the model's cross-entropy "
            f"{metrics['baseline']['ce_bits']:.3f} bits/token"
        )
    )
    for table in eval_tables(metrics):
        console.print(table)
    for line in gate_lines(metrics):
        typer.echo(line)
    for warning in metrics.get("warnings", []):
        typer.secho(wrapped(f"warning: {warning}"), err=True, fg="yellow", bold=True)
    typer.echo(
        wrapped(f"wrote {len(run.written)} files to {run.out} (the full report: summary.md)")
    )


@app.command()
def serve(
    model: ModelArg,
    lens: Annotated[
        Optional[list[str]], typer.Option(help=LENS_HELP + " Repeat to load several.")
    ] = None,
    eval_dir: Annotated[
        Optional[list[str]],
        typer.Option("--eval", help="A tunedlens eval --out folder: KL curve and gates per lens."),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    allow_remote: Annotated[
        bool, typer.Option(help="Allow a --host other than loopback (no authentication!).")
    ] = False,
    max_tokens: Annotated[int, typer.Option(help="Longest prompt accepted, in tokens.")] = 512,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    tokenizer: TokenizerOption = None,
    strict: StrictOption = True,
):
    """Explore MODEL's layers through lenses in a local web page (extra 'serve')."""
    from tunedlens.commands import serve as command

    command.run(
        model,
        lens or (),
        eval_dir or (),
        host=host,
        port=port,
        allow_remote=allow_remote,
        max_tokens=max_tokens,
        dtype=dtype,
        device=device,
        tokenizer=tokenizer,
        strict=strict,
        on_start=lambda url: typer.echo(
            f"tunedlens serve: process {os.getpid()}, {url} (loading {model} ...)"
        ),
        on_ready=lambda url: typer.echo(
            f"tunedlens explorer for {model}: {url}  (process {os.getpid()}; Ctrl-C stops it)"
        ),
    )


@lens_app.command("info")
def lens_info(
    path: Annotated[
        str, typer.Argument(help="Lens directory, J-lens file, hub location, or logit.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """Describe a lens: what it is, for which model, from what data; the size of each row's map.

    PATH may also be 'logit' (the logit lens). --json prints every recorded setting and version.
    """
    from tunedlens.cli.tables import info_tables
    from tunedlens.commands import lens_info as command

    info = command.run(path)
    if as_json:
        typer.echo(dumps(info, indent=2, default=str))
        return
    from rich.console import Console

    console = Console()
    for table in info_tables(info):
        console.print(table)


@lens_app.command("convert")
def lens_convert(
    source: Annotated[
        Path, typer.Argument(help="Lens to read: a directory (either format) or a J-lens file.")
    ],
    target: Annotated[
        Path, typer.Argument(help="Directory to write (a .pt file for --format artifact).")
    ],
    format: Annotated[
        str, typer.Option("--format", help="native or tuned-lens; for a J-lens native or artifact.")
    ] = "native",
    force: Annotated[bool, typer.Option(help="Replace what DST already holds.")] = False,
):
    """Convert a lens (tuned: native <-> reference format; J-lens: native <-> published artifact)."""
    from tunedlens.commands import lens_convert as command

    written = command.run(source, target, format, force=force)
    typer.echo(f"wrote {format} lens to {written}")


@lens_app.command("list")
def lens_list(
    model: Annotated[
        Optional[str],
        typer.Argument(help="A hub model id, a J-lens short name, or 'demo'. Default: every lens."),
    ] = None,
    collection: Annotated[
        Optional[list[Path]],
        typer.Option(help="A local lens collection (from 'hub package') to list too."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
):
    """List the lenses known for MODEL (all when omitted), with the --lens location of each.

    Looks in the current folder and its immediate subfolders (lenses written by train --out or
    fit-jlens --out), in --collection trees, and at the published tuned lenses and J-lenses;
    the 'here' column says which are on this machine (folder) or already downloaded (cached).
    """
    from tunedlens.commands import lens_list as command

    rows = command.run(model, collection or ())
    if as_json:
        typer.echo(dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(
            f"no known lens for {model!r} in this folder, its subfolders or the published "
            "lenses; fit one with 'tunedlens fit-jlens' or train one with 'tunedlens train'."
        )
        return
    from rich.console import Console

    from tunedlens.cli.tables import lens_list_table

    Console().print(lens_list_table(rows, model))


@lens_app.command("curves")
def lens_curves(
    run: Annotated[Path, typer.Argument(help="The --out directory of a 'tunedlens train' run.")],
    out: Annotated[
        Optional[Path],
        typer.Option(
            help="Figure file: .html (interactive) or .png. Default: RUNNAME-curves.html in the "
            "current folder (never inside the run's folder)."
        ),
    ] = None,
    plotly: PlotlyOption = PLOTLY_DEFAULT,
):
    """Draw a training run's curves from its train_log.jsonl: loss, learning rate, per-layer KL."""
    from tunedlens.commands import curves as command

    typer.echo(f"wrote {command.run(run, out, plotly=plotly)}")


@lens_app.command("merge")
def lens_merge(
    model: ModelArg,
    parts: Annotated[list[str], typer.Argument(help="J-lenses fitted on disjoint prompt slices.")],
    out: Annotated[Path, typer.Option(help="Directory for the merged J-lens (native format).")],
    force: Annotated[bool, typer.Option(help="Replace what --out already holds.")] = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
):
    """Merge J-lenses of MODEL fitted on disjoint prompt slices (weighted by their prompts)."""
    from tunedlens.commands import merge as command

    lens = command.run(model, parts, out, force=force, dtype=dtype, device=device)
    typer.echo(f"merged {len(parts)} J-lenses ({lens.n_prompts} prompts) into {out}")


@hub_app.command("package")
def hub_package(
    lenses: Annotated[list[Path], typer.Argument(help="Lens directories (or J-lens .pt files).")],
    out: Annotated[Path, typer.Option(help="Root of the collection tree to write.")],
    eval_reports: Annotated[
        Optional[list[str]],
        typer.Option("--eval", help="NAME=DIR: attach the evaluation report in DIR to lens NAME."),
    ] = None,
    update: Annotated[bool, typer.Option(help="Add to a collection tree made earlier.")] = False,
    license: Annotated[str, typer.Option(help="Licence in the dataset card.")] = "apache-2.0",
):
    """Build a lens collection: lenses/<model>/<name>/, INDEX.json with checksums, a dataset card."""
    from tunedlens.commands import hub_package as command

    tree = command.run(lenses, out, evals=eval_reports or (), update=update, license=license)
    typer.echo(f"packaged {len(lenses)} lens(es) into {tree}")


@hub_app.command("verify")
def hub_verify(
    tree: Annotated[Path, typer.Argument(help="A collection tree (local, or a downloaded one).")],
):
    """Check every file of a collection against INDEX.json (missing, extra, size, sha256) and load each lens."""
    from tunedlens.commands import hub_verify as command

    index = command.run(tree)
    typer.echo(f"{tree}: {len(index['lenses'])} lens(es), every file matches {tree / 'INDEX.json'}")


@hub_app.command("upload")
def hub_upload(
    tree: Annotated[Path, typer.Argument(help="A collection tree made by 'hub package'.")],
    repo: Annotated[str, typer.Argument(help="Hub dataset repository ORG/NAME.")],
    revision_tag: Annotated[str, typer.Option(help="Tag for this release, vYYYY.MM.DD.")],
    private: Annotated[bool, typer.Option(help="Create the repository private.")] = False,
):
    """Verify, then upload a collection to a hub dataset repository in one commit, and tag it."""
    from tunedlens.commands import hub_upload as command

    url = command.run(tree, repo, revision_tag=revision_tag, private=private)
    typer.echo(f"uploaded {tree} to {repo} ({revision_tag}): {url}")


@hub_app.command("download")
def hub_download(
    repo: Annotated[str, typer.Argument(help="Hub dataset repository ORG/NAME[@REVISION].")],
    model: Annotated[Optional[str], typer.Option(help="Fetch only this model's lenses.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Copy the verified files here.")] = None,
):
    """Download a collection (or one model's lenses) into the HF cache and verify every file."""
    from tunedlens.commands import hub_download as command

    where = command.run(repo, model=model, out=out)
    typer.echo(f"verified {repo}{f' ({model})' if model else ''}: {where}")


@analyze_app.command("early-exit")
def analyze_early_exit(
    model: ModelArg,
    data: Annotated[str, typer.Option(help="Text the tokens are read from " + DATA_FORMS)],
    lens: Annotated[
        Optional[list[str]],
        typer.Option(help=LENS_HELP + " Repeat for several (the logit lens is always in)."),
    ] = None,
    tokens: Annotated[
        int, typer.Option(help="Tokens read (whole sequences; half calibrate, half test).")
    ] = 2048,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = 256,
    out: Annotated[Path, typer.Option(help="Directory for the report.")] = Path("early-exit"),
    measure: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Confidence measure: max-prob, margin, entropy, patience, step-kl or "
            "saturation; repeatable. Default: all six."
        ),
    ] = None,
    threshold: Annotated[
        Optional[list[str]],
        typer.Option(
            help="MEASURE=VALUE[,VALUE...]: the thresholds swept for one measure (default: "
            "each measure's own sweep); repeatable."
        ),
    ] = None,
    check_every: Annotated[
        Optional[int],
        typer.Option(help="Check every k-th row from row 0 (default 1: every row)."),
    ] = None,
    check_rows: Annotated[
        Optional[str],
        typer.Option(help="Check only at these rows, e.g. 15,20,24 (instead of --check-every)."),
    ] = None,
    delta: Annotated[
        Optional[list[float]],
        typer.Option(
            help="Allowed disagreement δ in (0, 1) to certify thresholds for; repeatable. "
            "Default: 0.05 and 0.10."
        ),
    ] = None,
    epsilon: Annotated[
        float, typer.Option(help="Allowed probability ε in (0, 1) of a wrong certificate.")
    ] = 0.05,
    bound: Annotated[
        str,
        typer.Option(
            help="Binomial bound: auto (Clopper-Pearson with scipy, else Hoeffding), "
            "clopper-pearson or hoeffding."
        ),
    ] = "auto",
    generate: Annotated[
        int,
        typer.Option(
            help="New tokens per prompt of real early-exit greedy decoding, timed against "
            "the full model (0: none)."
        ),
    ] = 0,
    prompts: Annotated[
        int, typer.Option(help="Prompts to generate from (the starts of test sequences).")
    ] = 4,
    prompt_tokens: Annotated[int, typer.Option(help="Tokens of each prompt.")] = 16,
    generate_delta: Annotated[
        Optional[float],
        typer.Option(help="The δ whose certified thresholds generate (default the largest)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for the data order.")] = 0,
    text_column: Annotated[str, typer.Option(help="Text column of .jsonl/.parquet data.")] = "text",
    plots: Annotated[bool, typer.Option(help="Write PNG and HTML figures (extra 'plot').")] = True,
    force: Annotated[
        bool, typer.Option(help="Replace an earlier early-exit report in --out.")
    ] = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    tokenizer: TokenizerOption = None,
    strict: StrictOption = True,
):
    """How much compute early exit through each lens saves, and what it costs in quality.

    Teacher-forced, every position read exactly at every row by every lens. Per lens and
    confidence measure: a threshold sweep, the oracle (prediction depth), and thresholds
    certified on half the sequences, measured on the other half. Compute is counted in MACs,
    net of every check and of the K/V propagation of skipped blocks.
    """
    from tunedlens.cli.progress import CountProgress
    from tunedlens.commands import analyze_early_exit as command

    with CountProgress("early-exit", "sequences") as progress:
        report, where = command.run(
            model,
            data=data,
            lenses=lens or (),
            out=out,
            tokens=tokens,
            seq_len=seq_len,
            text_column=text_column,
            measures=measure,
            thresholds=threshold or (),
            check_every=check_every,
            check_rows=check_rows,
            deltas=tuple(delta) if delta else (0.05, 0.10),
            epsilon=epsilon,
            bound=bound,
            generate=generate,
            prompts=prompts,
            prompt_tokens=prompt_tokens,
            generate_delta=generate_delta,
            batch_size=batch_size,
            seed=seed,
            plots=plots,
            force=force,
            dtype=dtype,
            device=device,
            tokenizer=tokenizer,
            strict=strict,
            progress=progress.advance,
        )
    typer.echo(report.summary())
    typer.echo(f"wrote the early-exit report to {where}")


@analyze_app.command("prune")
def analyze_prune(
    model: ModelArg,
    data: Annotated[
        str,
        typer.Option(help="Calibration text, where the cheap scores are computed " + DATA_FORMS),
    ],
    test_data: Annotated[
        str,
        typer.Option(help="Held-out text, where every removal is measured (same forms as --data)."),
    ],
    lens: Annotated[
        Optional[list[str]],
        typer.Option(help=LENS_HELP + " Repeat for several (the logit lens is always in)."),
    ] = None,
    max_remove: Annotated[
        int, typer.Option(help="K: curves run over k = 0..K removed blocks.")
    ] = 4,
    out: Annotated[Path, typer.Option(help="Directory for the report.")] = Path("prune"),
    tokens: Annotated[int, typer.Option(help="Calibration tokens.")] = 2048,
    test_tokens: Annotated[int, typer.Option(help="Test tokens.")] = 2048,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence.")] = 256,
    text_column: Annotated[str, typer.Option(help="Text column of .jsonl/.parquet data.")] = "text",
    allow_same_data: Annotated[
        bool, typer.Option(help="Accept the same text for --data and --test-data.")
    ] = False,
    oracle: Annotated[
        str,
        typer.Option(
            help="static: rank blocks by their measured single-block effect once; "
            "greedy: re-measure after each removal (K x L forward passes)."
        ),
    ] = "static",
    heal: Annotated[
        bool, typer.Option(help="Heal Gromov's K-block removal with an affine map before the head.")
    ] = True,
    lens_positions: Annotated[
        Optional[int],
        typer.Option(
            help="Positions per calibration sequence the lens scores read (0 or less: all)."
        ),
    ] = 32,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed for the data order.")] = 0,
    plots: Annotated[bool, typer.Option(help="Write PNG and HTML figures (extra 'plot').")] = True,
    plotly: PlotlyOption = PLOTLY_DEFAULT,
    force: Annotated[
        bool, typer.Option(help="Replace an earlier pruning report in --out.")
    ] = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    tokenizer: TokenizerOption = None,
    strict: StrictOption = True,
):
    """Which blocks of MODEL can go: block scores against the measured effect of removing each.

    Scores on --data, effects on --test-data: Block Influence, angular distances, each lens's
    row-to-row KL, the measured change of cross-entropy and KL per removed block, curves for
    k = 1..K removed blocks by every method, truncation read through each lens, and a cheap heal.
    """
    from tunedlens.commands import analyze_prune as command

    report, where = command.run(
        model,
        data=data,
        test_data=test_data,
        lenses=lens or (),
        out=out,
        max_remove=max_remove,
        tokens=tokens,
        test_tokens=test_tokens,
        seq_len=seq_len,
        text_column=text_column,
        allow_same_data=allow_same_data,
        oracle=oracle,
        heal=heal,
        lens_positions=lens_positions if lens_positions and lens_positions > 0 else None,
        batch_size=batch_size,
        seed=seed,
        plots=plots,
        plotly=plotly,
        force=force,
        dtype=dtype,
        device=device,
        tokenizer=tokenizer,
        strict=strict,
        progress=lambda stage: typer.echo(f"prune: {stage}", err=True),
    )
    from rich.console import Console

    from tunedlens.cli.tables import prune_tables

    console = Console()
    for table in prune_tables(report.data):
        console.print(table)
    typer.echo(f"wrote the pruning report to {where} (the full report: prune_summary.md)")


@analyze_app.command("detect")
def analyze_detect(
    model: ModelArg,
    lens: Annotated[
        Optional[list[str]],
        typer.Option(help=LENS_HELP + " Repeat for several (the logit lens is always in)."),
    ] = None,
    task: Annotated[
        Optional[list[str]],
        typer.Option(
            help="capitals, sentiment, arithmetic, or a JSONL file of labelled prompts "
            "{prompt, choices, label, anomalous}; repeatable. Default: the three built-in."
        ),
    ] = None,
    shots: Annotated[
        Optional[int],
        typer.Option(help="Examples before each question (built-in tasks; default 5)."),
    ] = None,
    features: Annotated[
        Optional[list[str]],
        typer.Option(
            help="choices (answer log-likelihoods per row), trajectory (entropy, KL, "
            "max-prob, top-1 changes per row) or hidden (hidden states); repeatable. "
            "Default: all three."
        ),
    ] = None,
    detector: Annotated[
        Optional[list[str]],
        typer.Option(help="isolation-forest, lof or mahalanobis; repeatable. Default: all three."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory for the report.")] = Path("detect"),
    items: Annotated[
        Optional[int], typer.Option(help="Questions per built-in task (default: all).")
    ] = None,
    hidden_row: Annotated[
        Optional[int],
        typer.Option(help="Row whose hidden states the baseline reads (default L // 2)."),
    ] = None,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples for the AUROC intervals.")
    ] = 1000,
    batch_size: Annotated[int, typer.Option(help="Prompts per forward pass.")] = 8,
    seed: Annotated[
        int, typer.Option(help="Seed for prompts, splits, detectors and bootstrap.")
    ] = 0,
    plots: Annotated[bool, typer.Option(help="Write PNG and HTML figures (extra 'plot').")] = True,
    plotly: PlotlyOption = PLOTLY_DEFAULT,
    force: Annotated[
        bool, typer.Option(help="Replace an earlier detection report in --out.")
    ] = False,
    dtype: DtypeOption = "float32",
    device: DeviceOption = None,
    tokenizer: TokenizerOption = None,
    strict: StrictOption = True,
):
    """Detect injected prompts from prediction trajectories (Belrose et al. 2023, extra 'analyze').

    Few-shot multiple-choice prompts, normal and with a prompt injection, plus benign controls;
    detectors fitted on normal prompts only; AUROC with bootstrap intervals per task, lens,
    feature set and detector. Attack success (did the injection change the answers?) comes first.
    """
    from tunedlens.cli.progress import CountProgress
    from tunedlens.commands import analyze_detect as command

    with CountProgress("detect", "prompts") as progress:
        report, where = command.run(
            model,
            tasks=task or ("capitals", "sentiment", "arithmetic"),
            lenses=lens or (),
            out=out,
            shots=shots,
            features=features,
            detectors=detector,
            hidden_row=hidden_row,
            items=items,
            bootstrap=bootstrap,
            batch_size=batch_size,
            seed=seed,
            plots=plots,
            plotly=plotly,
            force=force,
            dtype=dtype,
            device=device,
            tokenizer=tokenizer,
            strict=strict,
            progress=progress.advance,
        )
    from rich.console import Console

    from tunedlens.cli.tables import detect_tables, wrapped

    console = Console()
    for table in detect_tables(report):
        console.print(table)
    for task in report.tasks.values():
        if task["attack"]["warning"]:
            typer.secho(wrapped(f"warning: {task['attack']['warning']}"), err=True, fg="yellow")
    typer.echo(f"wrote the detection report to {where} (the full report: summary.md)")


app.command("train")(with_parameters(train, train_settings()))


REPORT_BUG = (
    "tunedlens stopped on an internal error, a bug rather than a mistake in the command: please "
    "report this as a bug, with the command line and the traceback above, on the project's issue "
    "tracker."
)


_TERMINATED: list[int] = []
"""The signal that stopped the run, once one has."""


def _terminated(signum, frame) -> None:
    _TERMINATED.append(signum)
    raise SystemExit(128 + signum)


def main() -> None:
    """Entry point: run the app; a user error is one ``error:`` line and exit code 2.

    Errors tunedlens raises on purpose (:class:`~tunedlens.errors.TunedLensError`) print their
    message alone (with the traceback before it when ``TUNEDLENS_DEBUG=1``); click reports usage
    errors itself. Anything else is a bug: its traceback and a request to report it, exit code 1.
    """
    import traceback

    from transformers.utils import logging as hf_logging

    from tunedlens.errors import TunedLensError

    # Per-tensor loading bars and info logs drown the answer of a one-shot command.
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:  # the hub's retry warnings, too: a failed download ends in one error line of ours
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()
    except ImportError:
        pass
    # A kill (SIGTERM) unwinds like an exit, so half-written outputs beside --out are removed.
    signal.signal(signal.SIGTERM, _terminated)

    try:
        app()
    except TunedLensError as error:
        if os.environ.get("TUNEDLENS_DEBUG", "") not in ("", "0"):
            traceback.print_exc()
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except Exception:
        if _TERMINATED:  # code cleaning up after the kill (torch.save closing a file) raised anew
            typer.echo(f"stopped by signal {_TERMINATED[0]}", err=True)
            sys.exit(128 + _TERMINATED[0])
        traceback.print_exc()
        typer.echo(REPORT_BUG, err=True)
        sys.exit(1)
