"""Planning a training run: its data, its time budget, and the provenance it records."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from tunedlens.data import TextSource, TokenBlocks, pack_blocks
from tunedlens.distributed import World
from tunedlens.errors import TunedLensError
from tunedlens.lenses.lens import LogitLens
from tunedlens.metrics.divergence import NATS_TO_BITS
from tunedlens.train.config import TrainConfig, validation_sequences
from tunedlens.train.loop import TrainResult, sampled_kl, train_lens, validation_positions


@dataclass(frozen=True)
class DataPlan:
    """The token blocks of a run and where they came from."""

    train: TokenBlocks
    val: TokenBlocks | None
    train_spec: str
    val_spec: str | None


def planned_sequences(config: TrainConfig) -> tuple[int, int]:
    """Sequences of ``config.seq_len`` tokens a run trains on, and validates on."""
    train = (config.tokens // config.tokens_per_step) * config.tokens_per_step // config.seq_len
    return train, validation_sequences(config)


def plan_data(
    tokenizer,
    config: TrainConfig,
    *,
    data: str | TextSource,
    val_data: str | None,
    text_column: str = "text",
    progress=None,
) -> DataPlan:
    """Pack exactly the training (and validation) sequences the budget needs, or fail up front.

    ``progress("packing", done, total)`` (sequences) is called before and after.
    """
    train_sequences, val_sequences = planned_sequences(config)
    total = train_sequences + val_sequences
    if progress is not None:
        progress("packing", 0, total)
    plan = _pack(tokenizer, config, data, val_data, text_column, train_sequences, val_sequences)
    if progress is not None:
        progress("packing", total, total)
    return plan


def _pack(tokenizer, config, data, val_data, text_column, train_sequences, val_sequences):
    source = data if isinstance(data, TextSource) else TextSource(data, text_column)
    data = source.spec
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


def provenance(result: TrainResult, plan: DataPlan, model_spec: str) -> dict:
    """The training record that goes into ``provenance.json``."""
    from tunedlens.models import model_origin

    val_kl = result.val_kl
    return {
        "training": {
            "model_spec": model_spec,
            "model_source": model_origin(model_spec),
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
            "val_positions_per_sequence": result.config.positions_per_sequence,
            "logit_val_kl_bits": None
            if result.logit_val_kl is None
            else [v * NATS_TO_BITS for v in result.logit_val_kl],
        }
    }


def _probe_steps(marks: list[float], whole: list[float]) -> list[float]:
    """Seconds of each probe step, without the first micro-batch's warm-up where it can.

    ``marks`` are the instants training started and each micro-batch ended (on the first
    process; empty elsewhere), ``whole`` the steps' measured seconds. The first micro-batch of a
    fresh process pays one-time costs (allocations, kernel set-up) that later ones do not: a
    step is timed as its other micro-batches' mean, times their number.
    """
    per_step = (len(marks) - 1) // len(whole) if marks else 0
    if per_step < 2:
        return whole
    spans = [b - a for a, b in itertools.pairwise(marks)]
    steps = [spans[i * per_step : (i + 1) * per_step] for i in range(len(whole))]
    return [sum(step[1:]) / (per_step - 1) * per_step for step in steps]


def fit_time_budget(
    model,
    tokenizer,
    config: TrainConfig,
    out: Path,
    resume: bool,
    world: World,
    status,
    *,
    begun: float,
    data: str | TextSource,
    text_column: str,
) -> tuple[TrainConfig, dict]:
    """Size ``config.tokens`` to ``config.time_budget_s`` from one timed probe step.

    The time already spent in this process (loading) counts. The estimate includes packing the
    tokens and reserves the least-squares start (about a forward pass over its tokens) and the
    validations (exact KL at every layer at the positions training samples, timed on one probe
    sequence; the held-out sequences grow with the tokens). A resumed run keeps the tokens of its
    checkpoint and gets what is left of the budget.
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
            "budget_s": budget_s,
            "planned_tokens": tokens,
            "deadline": time.monotonic() + max(left, 0.0),
        }
    status(
        f"timing one step of {config.tokens_per_step:,} tokens to fit the {budget_s:.0f} s budget"
    )
    # A position schedule is probed at its mean number of positions (its mean cost per step).
    positions = config.positions_per_sequence
    if config.positions_per_sequence_end is not None:
        positions = round((positions + config.positions_per_sequence_end) / 2)
    # Later epochs over kept rows skip the model: the probe times one step of each kind.
    cached = config.epochs > 1 and config.keeps_rows
    probe = dataclasses.replace(
        config,
        tokens=config.tokens_per_step,
        epochs=2 if cached else 1,
        lstsq_init=False,
        time_budget_s=None,
        checkpoint_every=None,
        val_tokens=0,
        positions_per_sequence=positions,
        positions_per_sequence_end=None,
    )
    packing = time.perf_counter()
    blocks = plan_data(tokenizer, probe, data=data, val_data=None, text_column=text_column).train
    pack_per_token = (
        time.perf_counter() - packing
    ) / config.tokens_per_step  # packing is planned too
    lens = config.new_lens(model)
    marks: list[float] = []  # the start of training and the end of every micro-batch

    def mark(phase: str, done: int, total: int) -> None:
        if phase == "train":
            marks.append(time.perf_counter())

    probed = train_lens(lens, model, blocks, probe, world=world, progress=mark)
    step_s = _probe_steps(marks, [entry["step_s"] for entry in probed.history])
    # A token costs the first epoch's step and the later epochs' lighter steps (on kept rows).
    per_token = step_s[0] + (config.epochs - 1) * step_s[1] if cached else step_s[0]
    # Validation is exact KL over the whole vocabulary at the sampled positions, the logit
    # lens's too at the first: timed on one sequence, not guessed.
    start = time.perf_counter()
    sampled_kl(
        {"lens": lens, "logit": LogitLens(model, points=lens.points)},
        model,
        blocks.tokens[:1],
        validation_positions(config, 1),
        batch_size=1,
    )
    timings = torch.tensor([per_token / config.tokens_per_step, time.perf_counter() - start])
    per_token, per_val_sequence = (
        world.all_reduce_sum(timings) / world.size
    ).tolist()  # all plan alike
    forward_share = 0.75  # a forward pass costs about this share of a training token
    per_planned = per_token * (
        1 + (config.lstsq_budget_share * forward_share if config.lstsq_init else 0)
    )
    per_planned += pack_per_token

    def plan(validation: float) -> tuple[int, float]:
        # The final validation, and the least-squares start's (training must beat it).
        reserve = min(10.0, 0.05 * budget_s) + validation * (2 if config.lstsq_init else 1)
        per_step = per_planned * config.tokens_per_step + (
            validation / config.val_every if config.val_every else 0
        )
        left = budget_s - (time.monotonic() - begun) - reserve
        return max(1, int(left / per_step)) * config.tokens_per_step, reserve

    def validation_s(tokens: int) -> float:
        sized = dataclasses.replace(config, tokens=tokens)
        return per_val_sequence * validation_sequences(sized)

    # The validation grows with the tokens: plan with the fewest held-out sequences, then again
    # with those the first plan's tokens need (fewer tokens, so the second plan fits).
    tokens, _ = plan(validation_s(config.tokens_per_step))
    validation = validation_s(tokens)
    tokens, reserve = plan(validation)
    status(f"{1 / per_token:,.0f} tokens/s: training on {tokens:,} tokens")
    return dataclasses.replace(config, tokens=tokens), {
        "budget_s": budget_s,
        "probe_tokens_per_s": 1 / per_token,
        "planned_tokens": tokens,
        "validation_s_each": validation,
        "deadline": begun + budget_s - reserve,
    }
