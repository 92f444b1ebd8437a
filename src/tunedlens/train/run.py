"""What ``tunedlens train`` does, as a function: load, pack data, train, save with provenance."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tunedlens.data import DataError, TextSource, TokenBlocks, default_data_spec, pack_blocks
from tunedlens.distributed import World, init_world
from tunedlens.engine.core import layer_kl
from tunedlens.errors import TunedLensError
from tunedlens.lenses.io.files import LENS_FILES, WEIGHT_FILES
from tunedlens.lenses.lens import TunedLens
from tunedlens.metrics.divergence import NATS_TO_BITS
from tunedlens.outputs import OutputKind, check_out_target, local_inputs, publish_dir, staging_dir
from tunedlens.train.checkpoint import CHECKPOINT_NAME
from tunedlens.train.config import TrainConfig
from tunedlens.train.loggers import LOG_TARGETS, check_log_targets, make_loggers
from tunedlens.train.loop import StepStats, TrainResult, train_lens

LOG_NAME = "train_log.jsonl"
CURVES_NAME = "curves.html"
"""Where ``tunedlens lens curves RUN`` draws the curves by default."""


@dataclass(frozen=True)
class DataPlan:
    """The token blocks of a run and where they came from."""

    train: TokenBlocks
    val: TokenBlocks | None
    train_spec: str
    val_spec: str | None


def plan_data(
    tokenizer, config: TrainConfig, *, data: str, val_data: str | None, text_column: str = "text"
) -> DataPlan:
    """Pack exactly the training (and validation) sequences the budget needs, or fail up front."""
    train_sequences = (
        (config.tokens // config.tokens_per_step) * config.tokens_per_step // config.seq_len
    )
    val_sequences = max(1, config.val_tokens // config.seq_len) if config.val_tokens else 0
    source = TextSource(data, text_column)
    if val_data is None:  # hold out blocks of the training source, disjoint from training
        blocks = pack_blocks(
            source,
            tokenizer,
            seq_len=config.seq_len,
            n_sequences=train_sequences + val_sequences,
            seed=config.seed,
        )
        train = blocks[:train_sequences]
        val = blocks[train_sequences:] if val_sequences else None
        return DataPlan(train, val, data, f"{data} (held-out blocks)" if val_sequences else None)
    train = pack_blocks(
        source, tokenizer, seq_len=config.seq_len, n_sequences=train_sequences, seed=config.seed
    )
    val = pack_blocks(
        TextSource(val_data, text_column),
        tokenizer,
        seq_len=config.seq_len,
        n_sequences=val_sequences or 1,
        seed=config.seed,
    )
    return DataPlan(train, val, data, val_data)


RUN_FILES = (*LENS_FILES, CHECKPOINT_NAME, LOG_NAME)
"""The files a training run writes into its ``--out``."""
RUN_OUTPUT = OutputKind("a training run's output", (*RUN_FILES, CURVES_NAME), folders=LOG_TARGETS)
"""A run's ``--out``: its files, the curves drawn from it, and the logs of ``--log-to`` (each
target writes a folder named after it); what ``--force`` may replace."""


def check_out_dir(
    out: Path,
    resume: bool,
    *,
    force: bool = False,
    checkpoint_every: int | None = None,
    sources: Sequence[Path] = (),
) -> None:
    """Refuse, before any work, an ``--out`` that cannot be written or holds another run.

    ``resume`` needs a checkpoint there and ``checkpoint_every`` set; ``force`` replaces the
    results of another run (and nothing else: see :func:`tunedlens.outputs.check_out_target`;
    ``sources`` are the inputs on this machine).
    """
    if resume and force:
        raise TunedLensError("--resume continues the run in --out and --force replaces it; pick one.")
    check_out_target(out, RUN_OUTPUT, sources=sources)
    has_checkpoint = (out / CHECKPOINT_NAME).exists()
    if resume:
        if not has_checkpoint:
            raise TunedLensError(
                f"--resume: {out} holds no checkpoint ({CHECKPOINT_NAME}) to continue. Start "
                "without --resume, or pass the --out of a run made with --checkpoint-every."
            )
        if checkpoint_every is None:
            raise TunedLensError(
                "--resume needs --checkpoint-every N, as given to the run being resumed (its "
                "checkpoint records the setting, and a different one is refused)."
            )
        return
    present = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
    if force or not present:
        return
    if has_checkpoint:
        raise TunedLensError(
            f"{out} holds the checkpoint of an earlier run. Pass --resume to continue it, --force to "
            "replace it, or choose another --out (nothing was overwritten)."
        )
    if any((out / name).exists() for name in WEIGHT_FILES):
        raise TunedLensError(
            f"{out} already holds a lens; choose another --out, or pass --force to replace it "
            "(nothing was overwritten)."
        )
    raise TunedLensError(
        f"{out} already holds {', '.join(present)} of an earlier run; choose another --out, or "
        "pass --force to replace it (nothing was overwritten)."
    )


def _log_writer(out: Path, extra: Callable[[StepStats], None] | None, loggers=()):
    def on_step(stats: StepStats) -> None:
        record = {key: value for key, value in stats.__dict__.items()}
        record["loss_bits"] = stats.loss * NATS_TO_BITS
        record["tokens_per_s"] = stats.tokens_per_s
        if stats.val_kl is not None:
            record["val_kl_bits"] = [v * NATS_TO_BITS for v in stats.val_kl]
        with open(out / LOG_NAME, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        for logger in loggers:
            logger(stats)
        if extra is not None:
            extra(stats)

    return on_step


def provenance(result: TrainResult, plan: DataPlan, model_spec: str, lens: TunedLens) -> dict:
    """The training record that goes into ``provenance.json``."""
    val_kl = result.val_kl
    return {
        "training": {
            "model_spec": model_spec,
            "data": plan.train_spec,
            "data_content_hash": plan.train.content_hash(),
            "train_tokens": result.resolved.steps * result.config.tokens_per_step,
            # Fewer than train_tokens when the run stopped at its time budget.
            "trained_tokens": result.steps_done * result.config.tokens_per_step,
            "val_data": plan.val_spec,
            "val_content_hash": plan.val.content_hash() if plan.val is not None else None,
            "val_tokens": plan.val.n_tokens if plan.val is not None else 0,
            "lstsq_tokens": result.lstsq_tokens,
            "config": result.config.to_dict(),
            "resolved": result.resolved.to_dict(),
            "seed": result.config.seed,
            "steps_done": result.steps_done,
            "best_step": result.best_step,
            "stopped_early": result.stopped_early,
            "wall_time_s": result.wall_time,
            "val_kl_nats": val_kl,
            "val_kl_bits": None if val_kl is None else [v * NATS_TO_BITS for v in val_kl],
        }
    }


def _fit_budget(model, tokenizer, config: TrainConfig, out: Path, resume: bool, world: World,
                status, *, begun: float, data: str, text_column: str) -> tuple[TrainConfig, dict]:  # fmt: skip
    """Size ``config.tokens`` to ``config.time_budget_s`` from one timed probe step.

    The time already spent in this process (loading) counts. The estimate includes packing the
    tokens and reserves the least-squares start (about a forward pass over its tokens) and the
    validations (exact KL at every layer, timed on one probe sequence: far dearer per token than
    training, which samples 16 positions). A resumed run keeps the tokens of its checkpoint and gets what is left of
    the budget.
    """
    import dataclasses

    import torch

    from tunedlens.train.checkpoint import load_checkpoint

    budget_s = float(config.time_budget_s)
    if resume:
        state = load_checkpoint(out)
        if state is None:
            raise TunedLensError(f"--resume: {out} holds no checkpoint.")
        tokens = int(state["config"]["tokens"])
        left = budget_s - float(state.get("elapsed", 0.0))
        status(f"resuming within the time budget: {tokens:,} tokens, {max(left, 0):.0f} s left")
        return dataclasses.replace(config, tokens=tokens), {
            "budget_s": budget_s, "planned_tokens": tokens, "deadline": time.monotonic() + max(left, 0.0)}
    status(f"timing one step of {config.tokens_per_step:,} tokens to fit the {budget_s:.0f} s budget")
    # A position schedule is probed at its mean number of positions (its mean cost per step).
    positions = config.positions_per_sequence
    if config.positions_per_sequence_end is not None:
        positions = round((positions + config.positions_per_sequence_end) / 2)
    probe = dataclasses.replace(config, tokens=config.tokens_per_step, lstsq_init=False,
                                time_budget_s=None, checkpoint_every=None, val_tokens=0,
                                positions_per_sequence=positions, positions_per_sequence_end=None)  # fmt: skip
    packing = time.perf_counter()
    blocks = plan_data(tokenizer, probe, data=data, val_data=None, text_column=text_column).train
    pack_per_token = (time.perf_counter() - packing) / config.tokens_per_step  # packing is planned too
    lens = TunedLens.from_model(model, translator=config.translator, rank=config.rank,
                                use_temperature=config.use_temperature, seed=config.seed,
                                points=config.points)  # fmt: skip
    start = time.perf_counter()
    train_lens(lens, model, blocks, probe, world=world)
    per_token = time.perf_counter() - start
    # Validation is exact KL at every layer over the whole vocabulary: timed, not guessed.
    start = time.perf_counter()
    layer_kl(lens, model, blocks.tokens[:1].to(lens.unembed.device))
    timings = torch.tensor([per_token / config.tokens_per_step, time.perf_counter() - start])
    per_token, per_val_sequence = (world.all_reduce_sum(timings) / world.size).tolist()  # all plan alike
    forward_share = 0.75  # a forward pass costs about this share of a training token
    validation = per_val_sequence * max(1, config.val_tokens // config.seq_len) if config.val_tokens else 0.0
    reserve = min(10.0, 0.05 * budget_s) + validation  # the final validation
    per_planned = per_token * (1 + (config.lstsq_budget_share * forward_share if config.lstsq_init else 0))
    per_planned += pack_per_token
    per_step = per_planned * config.tokens_per_step + (validation / config.val_every if config.val_every else 0)
    left = budget_s - (time.monotonic() - begun) - reserve
    steps = max(1, int(left / per_step))
    tokens = steps * config.tokens_per_step
    status(f"{1 / per_token:,.0f} tokens/s: training on {tokens:,} tokens")
    return dataclasses.replace(config, tokens=tokens), {
        "budget_s": budget_s, "probe_tokens_per_s": 1 / per_token, "planned_tokens": tokens,
        "validation_s_each": validation,
        "deadline": begun + budget_s - reserve}  # fmt: skip


def run_training(
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
    world: World | None = None,
    log_to: Sequence[str] = (),
) -> TrainResult:
    """Train a lens for ``model_spec`` and write it (with provenance and a JSONL log) to ``out``.

    ``device`` places the model (and so the lens); ``tokenizer`` replaces the model's own
    tokenizer files; ``fsdp`` shards the decoder blocks across torchrun processes; ``log_to``
    mirrors every step to ``tensorboard`` and/or ``wandb`` (offline unless ``WANDB_MODE`` says
    otherwise), besides ``train_log.jsonl``.
    """
    from tunedlens.models import load_model, need_tokenizer

    begun = time.monotonic()  # a time budget counts from here: loading and packing included
    status = on_status or (lambda message: None)
    world = world or init_world()
    out = Path(out)
    check_log_targets(log_to)
    if lens_format == "tuned-lens" and config.points != "block":
        raise TunedLensError(
            f"--format tuned-lens holds one translator per block input; a lens on {config.points!r} "
            "points can only be written in the native format (drop --format)."
        )
    inputs = local_inputs(model_spec, data, val_data, tokenizer)
    check_out_dir(
        out, resume, force=force, checkpoint_every=config.checkpoint_every, sources=inputs
    )
    spec = data or default_data_spec(model_spec, status)
    TextSource(spec, text_column).check()
    if val_data is not None:
        TextSource(val_data, text_column).check()
    model, tokenizer = load_model(model_spec, dtype=dtype, device=device, tokenizer=tokenizer)
    need_tokenizer(tokenizer, model_spec)
    if fsdp:
        from tunedlens.train.distributed import shard_blocks

        shard_blocks(model, world)
    context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if context is not None and config.seq_len > context:
        raise DataError(
            f"--seq-len {config.seq_len} is longer than the model's context of {context} tokens."
        )
    started = time.perf_counter()
    # Built first: mid points of a parallel-block family are refused before any data is packed.
    lens = TunedLens.from_model(model, translator=config.translator, rank=config.rank,
                                use_temperature=config.use_temperature, seed=config.seed,
                                points=config.points)  # fmt: skip
    budget = None
    if config.time_budget_s is not None:
        config, budget = _fit_budget(model, tokenizer, config, out, resume, world, status,
                                     begun=begun, data=spec, text_column=text_column)  # fmt: skip
    status(f"packing {config.tokens:,} training tokens from {spec}")
    plan = plan_data(tokenizer, config, data=spec, val_data=val_data, text_column=text_column)
    # A run replacing an earlier one (--force) works beside it and takes its place once done,
    # so a failure or a kill leaves the earlier run as it was; other runs work in --out itself.
    replacing = world.is_primary and out.is_dir() and any(out.iterdir()) and not resume
    work = staging_dir(out) if replacing else out
    loggers = []
    try:
        if world.is_primary:
            work.mkdir(parents=True, exist_ok=True)
        if world.is_primary and log_to:
            labels = [lens.row_label(row) for row in range(lens.n_layers)]
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
            )
        finally:
            for logger in loggers:
                logger.close()
        if world.is_primary:
            record = provenance(result, plan, model_spec, lens)
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
