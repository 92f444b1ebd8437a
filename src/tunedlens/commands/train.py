"""``tunedlens train``: train a tuned lens for a model and save it, with provenance and a log."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import get_args

from tunedlens.arch.points import row_label
from tunedlens.commands.common import check_resume
from tunedlens.data import (
    DataError,
    SelfText,
    SelfTextSettings,
    TextSource,
    TokenBlocks,
    default_data_spec,
    sample_self_text,
)
from tunedlens.distributed import World, init_world
from tunedlens.errors import InputError, TunedLensError
from tunedlens.lenses.io.files import LENS_FILES, WEIGHT_FILES, LensFormat
from tunedlens.metrics.divergence import NATS_TO_BITS
from tunedlens.models import load_model, need_tokenizer, resolve_dtype
from tunedlens.outputs import (
    OutputKind,
    check_out_target,
    local_inputs,
    publish_dir,
    staging_dir,
)
from tunedlens.plot.html import BUNDLE_PATTERN
from tunedlens.sharding import check_world, load_sharded, plan_sharded_load
from tunedlens.train.checkpoint import CHECKPOINT_NAME
from tunedlens.train.config import TrainConfig, recipe_config
from tunedlens.train.curves import CURVES_NAME, LOG_NAME
from tunedlens.train.loggers import LOG_TARGETS, check_log_targets, make_loggers
from tunedlens.train.loop import Progress, StepStats, TrainResult, train_lens
from tunedlens.train.run import DataPlan, fit_time_budget, plan_data, planned_sequences, provenance

RUN_FILES = (*LENS_FILES, CHECKPOINT_NAME, LOG_NAME)
"""The files a training run writes into its ``--out``."""
RUN_OUTPUT = OutputKind(
    "a training run's output", (*RUN_FILES, CURVES_NAME, BUNDLE_PATTERN), folders=LOG_TARGETS
)
"""A run's ``--out``: its files, the curves drawn from it, and the logs of ``--log-to`` (each
target writes a folder named after it); what ``--force`` may replace."""


OPTION_NAMES = {
    "time_budget_s": "--time-budget",
    "positions_per_sequence_end": "--positions-at-end",
}
"""TrainConfig fields whose command-line option is not ``--field-name``."""


def option_name(field: str) -> str:
    """The ``train`` option that sets TrainConfig field ``field``."""
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


DEMO_TOKENS = 2**16
"""The demo's training tokens when neither ``--tokens`` nor ``--time-budget`` is given: a run of
minutes on a laptop's CPU (the default recipe's 2^21 tokens would outrun its corpus)."""


def config_from_options(recipe: str, given: dict, model: str | None = None) -> TrainConfig:
    """The run's settings: ``recipe`` with the options the user gave (``None`` kept as given).

    A setting TrainConfig refuses is named by its option (``--tokens: tokens=-5 is invalid``).
    The ``demo`` model trains on :data:`DEMO_TOKENS` unless the tokens or a time budget are given.
    """
    if given.get("time_budget_s") is not None and "tokens" in given:
        raise InputError(
            "--time-budget sizes the token budget itself; pass --tokens or --time-budget, not both"
        )
    if model == "demo" and "tokens" not in given and given.get("time_budget_s") is None:
        given = {**given, "tokens": DEMO_TOKENS}
    try:
        return recipe_config(recipe, explicit=given)
    except InputError as error:
        field = str(error).split("=", 1)[0]
        if field in given:
            raise InputError(f"{option_name(field)}: {error}") from None
        raise


def check_out(
    out: Path,
    resume: bool,
    *,
    force: bool = False,
    checkpoint_every: int | None = None,
    sources: Sequence[Path] = (),
) -> None:
    """Refuse, before any work, an ``--out`` that cannot be written or holds another run."""
    check_out_target(out, RUN_OUTPUT, sources=sources)  # files of others: refused first
    if not (resume or force) and any((out / name).exists() for name in WEIGHT_FILES):
        raise TunedLensError(
            f"{out} already holds a lens; choose another --out, or pass --force to replace it "
            "(nothing was overwritten)."
        )
    check_resume(
        out,
        RUN_OUTPUT,
        checkpoints=CHECKPOINT_NAME,
        resume=resume,
        force=force,
        checkpoint_every=checkpoint_every,
        sources=sources,
    )


def _check_self_options(
    source: TextSource, config: TrainConfig, val_data: str | None, fsdp: bool = False
) -> None:
    """What ``--data self`` cannot be combined with, refused before the model loads."""
    if fsdp and source.is_self:
        raise InputError(
            "--data self samples with the whole model on each process; sample the text first "
            "(e.g. with 'tunedlens eval MODEL --data self ...') and pass its cache file to --data, "
            "or drop --fsdp."
        )
    if val_data == "self":
        raise InputError(
            "--val-data self would sample the very text trained on; leave --val-data out to "
            "validate on held-out blocks of the self-generated text."
        )
    if (
        source.is_self
        and config.time_budget_s is not None
        and source.self_settings().tokens is None
    ):
        raise InputError(
            "--time-budget with --data self needs --self-tokens: the text is sampled first (its "
            "time counts against the budget), and the budget then trains on what it can."
        )


def _fit_self_text(
    config: TrainConfig, sampled: SelfText, val_data: str | None, status
) -> TrainConfig:
    """A time-budgeted run trains on at most the self-generated text there is."""
    import dataclasses

    _, val_sequences = planned_sequences(config)
    sequences = sampled.n_tokens // config.seq_len - (0 if val_data else val_sequences)
    steps = sequences * config.seq_len // config.tokens_per_step
    if steps < 1:
        raise DataError(
            f"--self-tokens {sampled.n_tokens:,} gives no training step of "
            f"{config.tokens_per_step:,} tokens after validation; raise --self-tokens."
        )
    if steps * config.tokens_per_step < config.tokens:
        status(
            f"the budget fits {config.tokens:,} tokens, but the self-generated text holds "
            f"{steps * config.tokens_per_step:,} for training; raise --self-tokens to use it all"
        )
        config = dataclasses.replace(config, tokens=steps * config.tokens_per_step)
    return config


def _log_writer(out: Path, extra: Callable[[StepStats], None] | None, loggers=()):
    def on_step(stats: StepStats) -> None:
        record = {key: value for key, value in stats.__dict__.items()}
        record["loss_bits"] = stats.loss * NATS_TO_BITS
        record["loss_mean_bits"] = stats.mean_loss * NATS_TO_BITS
        record["tokens_per_s"] = stats.tokens_per_s
        if stats.val_kl is not None:
            record["val_kl_bits"] = [v * NATS_TO_BITS for v in stats.val_kl]
        if stats.logit_val_kl is not None:
            record["logit_val_kl_bits"] = [v * NATS_TO_BITS for v in stats.logit_val_kl]
        with open(out / LOG_NAME, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        for logger in loggers:
            logger(stats)
        if extra is not None:
            extra(stats)

    return on_step


def _plan_once(world: World, make: Callable[[], DataPlan]) -> DataPlan:
    """The run's data, packed by the first process alone and sent to the others.

    Every process trains on the same global batches (each on its share), so one packing serves
    all, and start-up does not grow with the number of processes.
    """

    def packed():
        plan = make()
        info = {
            "train_spec": plan.train_spec,
            "val_spec": plan.val_spec,
            "train_source": plan.train.source,
            "val_source": None if plan.val is None else plan.val.source,
        }
        return info, [plan.train.tokens] + ([] if plan.val is None else [plan.val.tokens])

    info, tensors = world.from_primary(packed, what="the packing of the data")
    val = None if info["val_source"] is None else TokenBlocks(tensors[1], info["val_source"])
    return DataPlan(
        TokenBlocks(tensors[0], info["train_source"]), val, info["train_spec"], info["val_spec"]
    )


def run(
    model_spec: str,
    config: TrainConfig,
    out: str | Path,
    *,
    data: str | None = None,
    val_data: str | None = None,
    text_column: str = "text",
    resume: bool = False,
    force: bool = False,
    dtype: str = "float32",
    device: str | None = None,
    tokenizer: str | None = None,
    lens_format: str = "native",
    fsdp: bool = False,
    on_step: Callable[[StepStats], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    on_progress: Progress | None = None,
    world: World | None = None,
    log_to: Sequence[str] = (),
    self_text: SelfTextSettings | None = None,
    on_sample: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train a lens for ``model_spec`` and write it (with provenance and a JSONL log) to ``out``.

    ``device`` places the model (and so the lens); ``tokenizer`` replaces the model's own
    tokenizer files; ``fsdp`` shards the decoder blocks across torchrun processes; ``log_to``
    mirrors every step to ``tensorboard`` and/or ``wandb`` (offline unless ``WANDB_MODE`` says
    otherwise), besides ``train_log.jsonl``. ``on_status`` gets one line per stage (loading,
    packing) and ``on_progress`` how far each phase of training is (:data:`Progress`). With
    ``data="self"`` the text is sampled from the model as ``self_text`` says (or reused from its
    cache; every process samples the same text), ``on_sample(done, total)`` counting the tokens.
    """
    begun = time.monotonic()  # a time budget counts from here: loading and packing included
    status = on_status or (lambda message: None)
    world = world or init_world(device or "cpu")
    out = Path(out)
    if fsdp:
        check_world(world)
    check_log_targets(log_to)
    if lens_format not in get_args(LensFormat):
        raise InputError(f"--format must be 'native' or 'tuned-lens', got {lens_format!r}")
    if lens_format == "tuned-lens" and config.points != "block":
        raise TunedLensError(
            f"--format tuned-lens holds one translator per block input; a lens on {config.points!r} "
            "points can only be written in the native format (drop --format)."
        )
    try:
        resolve_dtype(dtype)
    except InputError as error:
        raise InputError(f"--dtype: {error}") from None
    inputs = local_inputs(model_spec, data, val_data, tokenizer)
    check_out(out, resume, force=force, checkpoint_every=config.checkpoint_every, sources=inputs)
    spec = data or default_data_spec(model_spec)
    source = TextSource(spec, text_column, self_text)
    source.check(allow_self=True)
    _check_self_options(source, config, val_data, fsdp)
    if val_data is not None:
        TextSource(val_data, text_column).check()
    status(f"loading {model_spec}")
    if fsdp:  # configs and indexes only: a GGUF without its copy, or too many processes, fail now
        sharded = plan_sharded_load(model_spec, world)
        model, tokenizer = load_sharded(
            sharded, world, dtype=dtype, device=device, tokenizer=tokenizer, on_status=status
        )
    else:
        model, tokenizer = load_model(model_spec, dtype=dtype, device=device, tokenizer=tokenizer)
    if not source.is_self:  # self text names its own need of a tokenizer
        need_tokenizer(tokenizer, model_spec)
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if context is not None and config.seq_len > context:
        raise DataError(
            f"--seq-len {config.seq_len} is longer than the model's context of {context} tokens."
        )
    started = time.perf_counter()
    # Built first: mid points of a parallel-block family are refused before any data is packed.
    lens = config.new_lens(model)
    sampled, packed = None, spec
    if source.is_self:
        train_sequences, val_sequences = planned_sequences(config)
        sampled = sample_self_text(
            model,
            tokenizer,
            source.self_settings(),
            tokens_needed=(train_sequences + (0 if val_data else val_sequences)) * config.seq_len,
            progress=on_sample,
            status=status,
            model_name=model_spec,
        )
        packed = TextSource.from_self_text(sampled)
    budget = None
    if config.time_budget_s is not None:
        config, budget = fit_time_budget(
            model,
            tokenizer,
            config,
            out,
            resume,
            world,
            status,
            begun=begun,
            data=packed,
            text_column=text_column,
        )
        if sampled is not None:
            config = _fit_self_text(config, sampled, val_data, status)
    status(f"packing {config.tokens:,} training tokens from {spec}")
    packing = time.perf_counter()
    plan = _plan_once(
        world,
        lambda: plan_data(
            tokenizer,
            config,
            data=packed,
            val_data=val_data,
            text_column=text_column,
            progress=on_progress,
        ),
    )
    held_out = "" if plan.val is None else f" and {plan.val.n_sequences:,} held-out sequences"
    status(
        f"packed {plan.train.n_sequences:,} sequences of {config.seq_len} tokens{held_out} "
        f"in {time.perf_counter() - packing:.1f} s"
    )
    if config.epochs > 1:
        status(
            f"{config.epochs} epochs over these tokens: "
            + (
                "the later ones train on the rows the first keeps (in memory up to "
                f"{config.cache_memory_gib:g} GiB, beyond that in a file in the temporary folder)"
                if config.keeps_rows
                else "each runs the model again"
            )
        )
    # A run replacing an earlier one (--force) works beside it and takes its place once done,
    # so a failure or a kill leaves the earlier run as it was; other runs work in --out itself.
    replacing = world.is_primary and out.is_dir() and any(out.iterdir()) and not resume
    work = staging_dir(out) if replacing else out
    loggers = []
    try:
        if world.is_primary:
            work.mkdir(parents=True, exist_ok=True)
        if world.is_primary and log_to:
            labels = [row_label(lens.points, row, lens.n_blocks) for row in range(lens.output_row)]
            loggers = make_loggers(log_to, work, {**config.to_dict(), "model": model_spec}, labels)
        try:
            result = train_lens(
                lens,
                model,
                plan.train,
                config,
                val_data=plan.val,
                world=world,
                resume=resume,
                checkpoint_dir=work if config.checkpoint_every else None,
                on_step=_log_writer(work, on_step, loggers) if world.is_primary else None,
                deadline=None if budget is None else budget["deadline"],
                progress=on_progress,
            )
        finally:
            for logger in loggers:
                logger.close()
        if world.is_primary:
            record = provenance(result, plan, model_spec)
            if sampled is not None:
                record["training"]["data"] = "self"
                if val_data is None and plan.val is not None:
                    record["training"]["val_data"] = "self (held-out blocks)"
                record["training"]["self_text"] = sampled.record()
            record["training"]["wall_time_this_process_s"] = time.perf_counter() - started
            if budget is not None:
                record["training"]["time_budget"] = {
                    key: value for key, value in budget.items() if key != "deadline"
                } | {"stopped_at_budget": result.stopped_at_budget}
            for name in LENS_FILES:
                (work / name).unlink(missing_ok=True)  # a resumed run replaces its own earlier save
            lens.save(work, format=lens_format, provenance=record)
        if replacing:
            publish_dir(work, out, RUN_OUTPUT)
    finally:
        if replacing:
            shutil.rmtree(work, ignore_errors=True)
    return result
