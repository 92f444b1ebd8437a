"""``train_lens``: distil a tuned lens from a model's own output distribution."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tunedlens.arch.residuals import collect_residuals, token_ids
from tunedlens.data.packing import TokenBlocks
from tunedlens.data.sources import DataError
from tunedlens.distributed import World
from tunedlens.engine.core import readout
from tunedlens.errors import InputError, LensMismatch, TunedLensError
from tunedlens.lenses.lens import LogitLens, TunedLens
from tunedlens.metrics.divergence import KLTarget, kl_to_target
from tunedlens.train.checkpoint import check_resumable, load_checkpoint, save_checkpoint
from tunedlens.train.config import Resolved, TrainConfig
from tunedlens.train.lstsq import lstsq_init, progress_batch
from tunedlens.train.muon import muon_optimizers
from tunedlens.train.rows import GIB, RowCache

_GROUP_LOGITS = 2**26
"""The most logits one decoding product of the training loss holds (several layers at once)."""
REUSE_BYTES = 2**30
"""The most memory the states kept from the least-squares start's forward pass may take."""


Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: ``phase`` is ``"lstsq"`` (sequences of the least-squares
start), ``"train"`` (training tokens, after every micro-batch) or ``"validation"`` (held-out
sequences); called at the start of a phase with ``done=0`` and after each batch. ``tunedlens
train`` also reports ``"packing"`` (sequences, before and after)."""


def sample_positions(
    config: TrainConfig, n_sequences: int, generator: torch.Generator, count: int | None = None
) -> torch.Tensor | None:
    """Positions of each sequence that the loss reads, ``(n_sequences, count)``, sorted.

    ``count`` defaults to ``config.positions_per_sequence``; ``None`` (no sampling) means every
    position of ``config.position_range``, and returns ``None`` when that is the whole sequence
    (KL objective). Training draws from its generator at every micro-batch; validation draws
    once, in the same way, from a generator of its own (so training's draws do not change).
    """
    seq_len = config.seq_len
    start, stop = config.position_range or (0, seq_len)
    if config.objective == "ce":
        stop = min(stop, seq_len - 1)  # the last position has no next token
    count = config.positions_per_sequence if count is None else count
    if count is None:
        if config.objective == "kl" and (start, stop) == (0, seq_len):
            return None
        return torch.arange(start, stop).expand(n_sequences, -1)
    if count > stop - start:
        raise InputError(
            f"positions_per_sequence={count} exceeds the {stop - start} positions sampled from"
        )
    scores = torch.rand(n_sequences, stop - start, generator=generator)
    return scores.argsort(dim=1)[:, :count].sort(dim=1).values + start


def validation_positions(config: TrainConfig, n_sequences: int) -> torch.Tensor | None:
    """The positions validation reads, drawn once per run as training draws them.

    The count is training's at its first step; the generator is seeded with ``config.seed``
    apart from training's, so validation does not change training's draws.
    """
    generator = torch.Generator().manual_seed(config.seed + 0x5EED)
    return sample_positions(config, n_sequences, generator)


def sampled_kl(
    lenses: dict,
    model: nn.Module,
    tokens: torch.Tensor,
    positions: torch.Tensor | None,
    *,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Exact mean KL(output row ‖ lens) in nats per layer of each lens, at ``positions``.

    One forward pass per batch of sequences keeps only the states at the chosen positions
    (``None``: every position); the KL is over the whole vocabulary, from the readout engine,
    with every lens of ``lenses`` (name -> lens, all reading the same points) sharing the
    model's distribution.
    """
    first = next(iter(lenses.values()))
    output_row = first.output_row
    totals = {name: torch.zeros(output_row, dtype=torch.float64) for name in lenses}
    count = 0
    for start in range(0, tokens.shape[0], batch_size):
        ids = tokens[start : start + batch_size].to(first.unembed.device)
        where = None if positions is None else positions[start : start + batch_size]
        residuals = collect_residuals(
            model,
            ids,
            arch=first.unembed.arch,
            positions=where,
            with_logits=False,
            points=first.points,
        )
        result = readout(
            model, lenses, states=residuals, rows=range(output_row), stats=("kl",), top_k=0
        )
        for name in lenses:
            totals[name] += result[name]["kl"].double().sum((0, 2))
        count += residuals.hidden[0].shape[0] * residuals.hidden[0].shape[1]
        if progress is not None:
            progress(min(start + batch_size, tokens.shape[0]), tokens.shape[0])
    return {name: total / count for name, total in totals.items()}


class TrainingDiverged(TunedLensError):
    """The loss or the activations became NaN or infinite."""


@dataclass(frozen=True)
class StepStats:
    """What happened in one optimizer step (passed to ``on_step``)."""

    step: int
    """Optimizer steps completed, 1-based."""
    steps: int
    """Optimizer steps in the run."""
    tokens: int
    """Training tokens consumed so far (all processes)."""
    loss: float
    """Sum over trained layers of the mean loss per token, nats (KL or CE)."""
    layer_loss: list[float | None]
    """Mean loss per token of each layer this step (``None``: not sampled)."""
    lr: float
    """Learning rate of this step."""
    grad_norm: float
    """Gradient norm before clipping."""
    elapsed: float
    """Seconds of training so far (including earlier runs of a resumed job)."""
    val_kl: list[float] | None = None
    """Validation KL per layer in nats, when this step validated."""
    logit_val_kl: list[float] | None = None
    """The logit lens's validation KL per layer in nats (same positions), when this step
    validated."""
    step_s: float = 0.0
    """Wall seconds of this optimizer step (forward, backward, update; validation excluded)."""
    val_s: float | None = None
    """Wall seconds of this step's validation, when it validated."""
    total_tokens: int = 0
    """Training tokens of the whole run (``steps`` x tokens per step)."""

    @property
    def mean_loss(self) -> float:
        """Mean over the layers trained this step of their loss per token, nats.

        For the KL objective this is the validation KL's basis (mean over layers), at the
        positions this step sampled.
        """
        values = [v for v in self.layer_loss if v is not None]
        return sum(values) / len(values) if values else float("nan")

    @property
    def tokens_per_s(self) -> float:
        """Training tokens per second of this step (validation excluded)."""
        return (self.tokens / self.step) / self.step_s if self.step_s > 0 else float("nan")


@dataclass
class TrainResult:
    """The trained lens and how it got there."""

    lens: TunedLens
    config: TrainConfig
    resolved: Resolved
    val_kl: list[float] | None
    """Validation KL per layer (nats) of the returned lens."""
    best_step: int
    steps_done: int
    stopped_early: bool
    wall_time: float
    lstsq_tokens: int
    history: list[dict] = field(default_factory=list)
    stopped_at_budget: bool = False
    """Training stopped at ``config.time_budget_s`` before its planned steps."""
    logit_val_kl: list[float] | None = None
    """Validation KL per layer (nats) of the logit lens, on the same positions as ``val_kl``."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds of the least-squares start (``lstsq``), the optimizer ``steps`` and the
    ``validation`` (all of them together)."""
    val_positions: int = 0
    """Positions (cells) each validation read."""


def resolve(config: TrainConfig, lens: TunedLens, world: World) -> Resolved:
    """Derive steps, accumulation and trained layers; check the settings fit together."""
    per_pass = config.batch_size * config.seq_len * world.size
    if config.tokens_per_step % per_pass:
        raise InputError(
            f"tokens_per_step={config.tokens_per_step} is not a multiple of batch_size x seq_len x "
            f"processes = {per_pass}; adjust --batch-size or --tokens-per-step."
        )
    steps_per_epoch = config.tokens // config.tokens_per_step
    layers = list(range(lens.output_row - 1 if config.freeze_last else lens.output_row))
    if config.layers_per_step is not None and config.layers_per_step > len(layers):
        raise InputError(
            f"layers_per_step={config.layers_per_step} exceeds the {len(layers)} trained layers"
        )
    return Resolved(
        n_blocks=lens.n_blocks,
        output_row=lens.output_row,
        d_model=lens.d_model,
        steps=steps_per_epoch * config.epochs,
        accumulation=config.tokens_per_step // per_pass,
        world_size=world.size,
        warmup_steps=int(config.warmup_fraction * steps_per_epoch * config.epochs),
        trained_layers=layers,
        steps_per_epoch=steps_per_epoch,
        cache_residuals=config.keeps_rows,
    )


def _lr_factor(config: TrainConfig, resolved: Resolved) -> Callable[[int], float]:
    warmup, steps = resolved.warmup_steps, resolved.steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


def _optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(
        parameters, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )


def _one_or_list(items: list):
    return items[0] if len(items) == 1 else items


def _as_list(item) -> list:
    return item if isinstance(item, list) else [item]


class _Trainer:
    """The state of one run; ``train_lens`` drives it. Kept private: the function is the API."""

    def __init__(self, lens, model, data, config, resolved, world, progress=None):
        self.lens, self.model, self.data, self.config = lens, model, data, config
        self.resolved, self.world = resolved, world
        self.progress = progress if world.is_primary else None
        self.parameters = [p for p in lens.translator.parameters()]
        if config.optimizer == "muon":
            self.optimizers = muon_optimizers(
                self.parameters,
                lr=config.lr,
                momentum=config.momentum,
                weight_decay=config.weight_decay,
                betas=config.betas,
            )
        else:
            self.optimizers = [_optimizer(config, self.parameters)]
        factor = _lr_factor(config, resolved)
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in self.optimizers]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.best_val: float | None = None
        self.best_state: dict | None = None
        self.best_step = 0
        self.stale = 0
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.lstsq_tokens = 0
        self.logit_val_kl: list[float] | None = None
        self.val_positions: torch.Tensor | None = None
        self.seconds = {"lstsq": 0.0, "steps": 0.0, "validation": 0.0}
        self.planned: list[torch.Tensor] = []  # positions of micro-batches whose states are kept
        self.kept: dict[int, list[torch.Tensor]] = {}
        # The first epoch's positions, one entry per micro-batch (all processes' sequences), and
        # the order of the kept rows in the current later epoch: both go into checkpoints.
        self.epoch_positions: list[torch.Tensor | None] = []
        self.order: torch.Tensor | None = None
        self.cache: RowCache | None = None

    # -- sampling --------------------------------------------------------------------------
    def _count(self, step: int) -> int | None:
        config, count = self.config, self.config.positions_per_sequence
        if count is not None and config.positions_per_sequence_end is not None:
            progress = step / max(1, self.resolved.steps_per_epoch - 1)
            count = round(count + (config.positions_per_sequence_end - count) * progress)
        return count

    def _positions(self, n_sequences: int) -> torch.Tensor | None:
        return sample_positions(self.config, n_sequences, self.generator, self._count(self.step))

    def plan_reuse(self, n_sequences: int, checkpointing: bool):
        """Keep the states the first micro-batches need from the least-squares start's pass.

        The least-squares start runs the model over the first ``n_sequences``, the sequences
        the first micro-batches train on: keeping the states at the positions those will sample
        spares them their own forward pass (the same sequences, the same states). Their positions are drawn now, in the order training would draw them, from training's
        generator: the run is the one it would be without this. Only where that holds simply
        (one process, a fresh run without checkpoints, sampled positions, every layer per
        micro-batch) and within :data:`REUSE_BYTES`. Returns the callback for
        :func:`lstsq_init`'s ``on_states``, or ``None``.
        """
        config = self.config
        if (
            self.world.size != 1
            or checkpointing
            or self.step != 0
            or config.layers_per_step is not None
            or config.positions_per_sequence is None
        ):
            return None
        accumulation = self.resolved.accumulation
        steps = self.resolved.steps_per_epoch
        counts = [self._count(index // accumulation) for index in range(steps)]
        per_micro = (
            config.batch_size * max(counts) * (self.lens.output_row + 1) * self.lens.d_model * 4
        )
        n_micro = min(
            n_sequences // config.batch_size,
            REUSE_BYTES // per_micro,
            steps * accumulation,
        )
        if n_micro < 1:
            return None
        self.planned = [
            sample_positions(config, config.batch_size, self.generator, counts[i // accumulation])
            for i in range(n_micro)
        ]
        self.kept: dict[int, list[torch.Tensor]] = {}

        def keep(start: int, hidden) -> None:
            for local in range(hidden[0].shape[0]):
                index, offset = divmod(start + local, config.batch_size)
                if index < n_micro:
                    where = self.planned[index][offset].to(hidden[0].device)
                    self.kept[start + local] = [h[local, where] for h in hidden]

        return keep

    def _layers(self) -> list[int]:
        layers = self.resolved.trained_layers
        if self.config.layers_per_step is None:
            return layers
        chosen = torch.randperm(len(layers), generator=self.generator)[
            : self.config.layers_per_step
        ]
        return sorted(layers[i] for i in chosen.tolist())

    # -- one micro-batch -------------------------------------------------------------------
    def _micro_batch(self, index: int) -> tuple[torch.Tensor, list[int]]:
        epoch, local = divmod(index, self.resolved.steps_per_epoch * self.resolved.accumulation)
        if epoch and self.cache is not None:
            hidden, next_ids = self._cached_rows(local)
            layers = self._layers()
            return self._backward(hidden, next_ids, layers), layers
        per_rank = self.config.batch_size
        ids = self._sequences(local)
        states = None
        if index < len(self.planned):  # kept from the least-squares start (one process)
            first = local * per_rank * self.world.size
            positions = self.planned[index]
            rows = [self.kept.pop(first + offset) for offset in range(per_rank)]
            states = [torch.stack(row) for row in zip(*rows, strict=True)]
        else:
            positions = self._positions(ids.shape[0])
        if self.cache is not None:
            self.epoch_positions.append(positions)
        layers = self._layers()
        ids, positions = self._mine(ids, positions)
        if states is None:
            states = self._forward(ids, positions)
        next_ids = self._next_ids(ids, positions)
        if self.cache is not None:
            self.cache.add(states, next_ids)
        hidden = [h.reshape(-1, h.shape[-1]) for h in states]
        return self._backward(hidden, next_ids, layers), layers

    def _sequences(self, local: int) -> torch.Tensor:
        """The sequences (of all processes) of the first epoch's micro-batch ``local``."""
        together = self.config.batch_size * self.world.size
        return self.data.tokens[local * together : (local + 1) * together]

    def _mine(self, ids, positions):
        per_rank, rank = self.config.batch_size, self.world.rank
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        ids = ids[mine].to(self.lens.unembed.device)
        return ids, None if positions is None else positions[mine]

    def _forward(self, ids, positions) -> list[torch.Tensor]:
        # collect_residuals refuses non-finite activations, naming the first layer.
        return collect_residuals(
            self.model,
            ids,
            arch=self.lens.unembed.arch,
            positions=positions,
            with_logits=False,
            points=self.lens.points,
        ).hidden

    def _next_ids(self, ids, positions) -> torch.Tensor | None:
        if self.config.objective != "ce":
            return None
        return ids.gather(1, positions.to(ids.device) + 1).reshape(-1)

    # -- the kept rows of later epochs -----------------------------------------------------
    def _rows_per_micro_batch(self, positions: torch.Tensor | None) -> int:
        per_sequence = self.config.seq_len if positions is None else positions.shape[1]
        return self.config.batch_size * per_sequence

    def open_cache(self) -> None:
        """Make room for every row of the first epoch (this process's share)."""
        config, resolved = self.config, self.resolved
        throwaway = torch.Generator()
        n_rows = sum(
            self._rows_per_micro_batch(sample_positions(config, 1, throwaway, self._count(step)))
            * resolved.accumulation
            for step in range(resolved.steps_per_epoch)
        )
        self.cache = RowCache(
            n_rows,
            self.lens.output_row + 1,
            self.lens.d_model,
            dtype=getattr(torch, config.cache_dtype),
            memory_bytes=config.cache_memory_gib * GIB,
            with_next_ids=config.objective == "ce",
        )

    def refill_cache(self) -> None:
        """After a resume: the first epoch's rows again, at the positions it recorded."""
        for local, positions in enumerate(self.epoch_positions):
            ids, mine = self._mine(self._sequences(local), positions)
            self.cache.add(self._forward(ids, mine), self._next_ids(ids, mine))

    def _cached_rows(self, local: int):
        if local == 0:  # a new epoch: a new order of the kept rows
            self.order = torch.randperm(self.cache.filled, generator=self.generator)
        start, stop = self.cache.spans[local]
        return self.cache.take(self.order[start:stop], self.lens.unembed.device)

    def _backward(self, hidden, next_ids, layers) -> torch.Tensor:
        """Accumulate the gradients of one micro-batch's rows.

        ``hidden`` holds one ``(rows, d_model)`` tensor per lens row and the output row;
        ``next_ids`` the next tokens (cross-entropy only).
        """
        config, lens, output_row = self.config, self.lens, self.lens.output_row
        n_rows = hidden[0].shape[0]
        scale = (
            len(self.resolved.trained_layers) / len(layers) / (n_rows * self.resolved.accumulation)
        )
        losses = [torch.zeros((), dtype=torch.float64) for _ in range(output_row)]
        for rows in torch.split(torch.arange(n_rows), config.loss_chunk_rows):
            if config.objective == "ce":
                for layer in layers:
                    logits = lens(hidden[layer][rows], layer)
                    loss = F.cross_entropy(
                        logits, next_ids[rows.to(next_ids.device)], reduction="sum"
                    )
                    (loss * scale).backward()
                    losses[layer] += loss.detach().double()
                continue
            with torch.no_grad():
                target = KLTarget(lens(hidden[output_row][rows], output_row).log_softmax(-1))
            # Layers share the head: decode several in one product (about 10 % faster on a CPU
            # than one per layer), of at most loss_chunk_rows rows and 2^26 logits (256 MiB).
            most = min(config.loss_chunk_rows, _GROUP_LOGITS // lens.unembed.vocab_size)
            per_group = max(1, most // len(rows))
            for first in range(0, len(layers), per_group):
                group = layers[first : first + per_group]
                logits = lens.unembed(
                    torch.stack([lens.transform(hidden[i][rows], i) for i in group])
                )
                scales = [lens.log_logit_scale(i) for i in group]
                if scales[0] is not None:
                    logits = logits * torch.stack(scales).exp().view(-1, 1, 1)
                loss = kl_to_target(target, logits).sum(-1)  # (layers in the group,)
                (loss.sum() * scale).backward()
                for i, value in zip(group, loss.detach().double(), strict=True):
                    losses[i] += value
        # One check (and one sync) per micro-batch: a diverged loss is caught before any update.
        sums = torch.stack(losses).cpu()
        bad = torch.nonzero(~torch.isfinite(sums)).flatten().tolist()
        if bad:
            raise TrainingDiverged(
                f"the loss of layer {bad[0]} is {sums[bad[0]].item()} at step {self.step + 1}. "
                "The last good checkpoint (if any) is kept; lower the learning rate."
            )
        return sums / n_rows

    # -- one optimizer step ----------------------------------------------------------------
    def _penalty(self) -> torch.Tensor | None:
        config = self.config
        if not (config.l2_penalty or config.smoothness_penalty):
            return None
        total = torch.zeros(())
        for name, parameter in self.lens.translator.named_parameters():
            if name == "log_temp":
                continue
            if config.l2_penalty:
                total = total + config.l2_penalty * parameter.pow(2).sum()
            if config.smoothness_penalty and parameter.shape[0] > 1:
                total = (
                    total
                    + config.smoothness_penalty * (parameter[1:] - parameter[:-1]).pow(2).sum()
                )
        return total

    def take_step(self) -> StepStats:
        started = time.perf_counter()
        resolved = self.resolved
        layer_sums = torch.zeros(resolved.output_row, dtype=torch.float64)
        layer_counts = torch.zeros(resolved.output_row)
        total = resolved.steps * self.config.tokens_per_step
        for micro in range(resolved.accumulation):
            index = self.step * resolved.accumulation + micro
            means, layers = self._micro_batch(index)
            layer_sums += means
            layer_counts[layers] += 1
            if self.progress is not None:
                done = self.step * self.config.tokens_per_step
                per_micro = self.config.tokens_per_step // resolved.accumulation
                self.progress("train", done + (micro + 1) * per_micro, total)
        self.world.average_gradients(self.parameters)
        penalty = self._penalty()
        if penalty is not None:
            penalty.backward()
        if self.config.freeze_last:
            for parameter in self.parameters:
                if parameter.grad is not None:
                    parameter.grad[-1] = 0
        clip = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.parameters, clip))
        lr = self.optimizers[0].param_groups[0]["lr"]
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for scheduler in self.schedulers:
            scheduler.step()
        self.step += 1
        self.world.all_reduce_sum(layer_sums)
        layer_sums /= self.world.size
        layer_loss = [
            float(layer_sums[i] / layer_counts[i]) if layer_counts[i] else None
            for i in range(resolved.output_row)
        ]
        self.elapsed += time.perf_counter() - started
        self.seconds["steps"] += time.perf_counter() - started
        return StepStats(
            step=self.step,
            steps=resolved.steps,
            tokens=self.step * self.config.tokens_per_step,
            loss=sum(v for v in layer_loss if v is not None),
            layer_loss=layer_loss,
            lr=lr,
            grad_norm=grad_norm,
            elapsed=self.elapsed,
            step_s=time.perf_counter() - started,
            total_tokens=total,
        )

    # -- validation, checkpoints -----------------------------------------------------------
    def validate(self, val_tokens: torch.Tensor) -> list[float]:
        """Exact KL at the validation positions; the logit lens's too, at the first validation."""
        started = time.perf_counter()
        # The same draw at every validation (its own seeded generator): comparable scores.
        self.val_positions = validation_positions(self.config, val_tokens.shape[0])
        lenses = {"lens": self.lens}
        if self.logit_val_kl is None:  # the logit lens does not change: read it once
            lenses["logit"] = LogitLens(self.model, points=self.lens.points)
        progress = None
        if self.progress is not None:
            progress = lambda done, total: self.progress("validation", done, total)  # noqa: E731
            progress(0, val_tokens.shape[0])
        with torch.no_grad():
            kls = sampled_kl(
                lenses,
                self.model,
                val_tokens,
                self.val_positions,
                batch_size=progress_batch(self.config.batch_size, self.config.seq_len),
                progress=progress,
            )
        kl = kls["lens"].tolist()
        if "logit" in kls:
            self.logit_val_kl = kls["logit"].tolist()
        score = sum(kl) / len(kl)
        if self.best_val is None or score < self.best_val:
            self.best_val, self.best_step, self.stale = score, self.step, 0
            self.best_state = copy.deepcopy(self.lens.translator.state_dict())
        else:
            self.stale += 1
        self.elapsed += time.perf_counter() - started
        self.seconds["validation"] += time.perf_counter() - started
        return kl

    def state(self, model_info: dict, data_hash: str) -> dict:
        return {
            "config": self.config.to_dict(),
            "model": model_info,
            "data_hash": data_hash,
            "step": self.step,
            "translator": self.lens.translator.state_dict(),
            # One optimizer (every recipe but Muon's) is stored as itself, not as a list of one.
            "optimizer": _one_or_list([o.state_dict() for o in self.optimizers]),
            "scheduler": _one_or_list([s.state_dict() for s in self.schedulers]),
            "generator": self.generator.get_state(),
            "best_val": self.best_val,
            "best_state": self.best_state,
            "best_step": self.best_step,
            "stale": self.stale,
            "history": self.history,
            "elapsed": self.elapsed,
            "lstsq_tokens": self.lstsq_tokens,
            "logit_val_kl": self.logit_val_kl,
            "seconds": self.seconds,
            "epoch_positions": self.epoch_positions,
            "order": self.order,
        }

    def restore(self, state: dict) -> None:
        self.lens.translator.load_state_dict(state["translator"])
        for optimizer, saved in zip(self.optimizers, _as_list(state["optimizer"]), strict=True):
            optimizer.load_state_dict(saved)
        for scheduler, saved in zip(self.schedulers, _as_list(state["scheduler"]), strict=True):
            scheduler.load_state_dict(saved)
        self.generator.set_state(state["generator"])
        for key in (
            "step",
            "best_val",
            "best_state",
            "best_step",
            "stale",
            "history",
            "elapsed",
            "lstsq_tokens",
        ):
            setattr(self, key, state[key])
        # Absent from older checkpoints.
        self.logit_val_kl = state.get("logit_val_kl")
        self.seconds = dict(state.get("seconds", self.seconds))
        self.epoch_positions = list(state.get("epoch_positions") or [])
        self.order = state.get("order")


def _as_blocks(data) -> TokenBlocks:
    if isinstance(data, TokenBlocks):
        return data
    if isinstance(data, (list, tuple)):
        data = torch.stack([token_ids(x, "token_ids") for x in data])
    return TokenBlocks(token_ids(data, "token_ids"), "tensor")


def train_lens(
    lens: TunedLens,
    model: nn.Module,
    data: TokenBlocks | torch.Tensor,
    config: TrainConfig,
    *,
    val_data: TokenBlocks | torch.Tensor | None = None,
    on_step: Callable[[StepStats], None] | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    world: World | None = None,
    deadline: float | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``lens`` on ``model``'s own predictions over ``data``.

    Args:
        lens: The lens to train (its translator kind must match ``config.translator``).
        model: The frozen causal LM (eval mode; its parameters get no gradients).
        data: Training token ids ``(n_sequences, seq_len)`` (or :class:`TokenBlocks`); it must
            hold at least ``config.tokens`` tokens, read in order (shuffle beforehand).
        config: The settings.
        val_data: Held-out token ids for validation and early stopping.
        on_step: Called after every optimizer step with its :class:`StepStats`.
        checkpoint_dir: Where ``checkpoint.pt`` goes (every ``config.checkpoint_every`` steps).
        resume: Continue from the checkpoint in ``checkpoint_dir`` if there is one.
        world: Process group description for data-parallel runs.
        deadline: A ``time.monotonic()`` instant: stop after the first step that ends past it
            (validating then, so the best validated lens is returned).
        progress: Told how far each phase is (:data:`Progress`), on the first process only.

    Returns:
        A :class:`TrainResult`; its lens is the best validated one when validation ran.
    """
    world = world or World()
    data = _as_blocks(data)
    val = None if val_data is None else _as_blocks(val_data)
    if model is not None and lens.unembed.unembedding is not model.get_output_embeddings():
        raise LensMismatch(
            "the lens was built for another model (it decodes with another head); build it with "
            "TunedLens.from_model(model) for the model you train on."
        )
    if lens.translator.kind != config.translator:
        raise InputError(
            f"the lens has a {lens.translator.kind} translator, config.translator={config.translator!r}"
        )
    if data.seq_len != config.seq_len:
        raise DataError(
            f"data has sequences of {data.seq_len} tokens, config.seq_len={config.seq_len}"
        )
    resolved = resolve(config, lens, world)
    needed = resolved.steps_per_epoch * config.tokens_per_step // config.seq_len
    if data.n_sequences < needed:
        raise DataError(f"data holds {data.n_sequences} sequences; the budget needs {needed}")
    model.requires_grad_(False)
    trainer = _Trainer(lens, model, data, config, resolved, world, progress)
    try:
        return _run(trainer, val, on_step, checkpoint_dir, resume, deadline, needed)
    finally:
        if trainer.cache is not None:
            trainer.cache.close()


def _run(trainer: _Trainer, val, on_step, checkpoint_dir, resume, deadline, needed):
    lens, model, data, config = trainer.lens, trainer.model, trainer.data, trainer.config
    resolved, world = trainer.resolved, trainer.world
    directory = Path(checkpoint_dir) if checkpoint_dir is not None else None
    data_hash = data[:needed].content_hash()
    state = load_checkpoint(directory) if directory is not None and resume else None
    if state is not None:
        check_resumable(
            state,
            config=config.to_dict(),
            model=lens.model_info,
            data_hash=data_hash,
            path=directory,
        )
        trainer.restore(state)
        if resolved.cache_residuals:
            trainer.open_cache()
            trainer.refill_cache()
    elif config.lstsq_init:
        started = time.perf_counter()
        fit_tokens = min(config.lstsq_tokens, int(config.tokens * config.lstsq_budget_share))
        count = max(1, fit_tokens // config.seq_len // world.size)
        shard = data.tokens[world.rank * count : (world.rank + 1) * count]
        keep = trainer.plan_reuse(count, checkpointing=bool(directory and config.checkpoint_every))
        trainer.lstsq_tokens = lstsq_init(
            lens,
            model,
            shard,
            batch_size=config.batch_size,
            all_reduce=world.all_reduce_sum if world.size > 1 else None,
            on_states=keep,
            progress=None
            if trainer.progress is None
            else (lambda done, total: trainer.progress("lstsq", done, total)),
        )
        trainer.elapsed += time.perf_counter() - started
        trainer.seconds["lstsq"] = time.perf_counter() - started
        if val is not None:  # the start is a lens too: training must beat it to replace it
            val_kl = trainer.validate(val.tokens)
            trainer.history.append(
                {
                    "step": 0,
                    "loss": None,
                    "lr": None,
                    "grad_norm": None,
                    "val_kl": val_kl,
                    "step_s": 0.0,
                }
            )
    if state is None and resolved.cache_residuals:
        trainer.open_cache()
    stopped_early = at_budget = False
    if trainer.progress is not None:
        trainer.progress(
            "train", trainer.step * config.tokens_per_step, resolved.steps * config.tokens_per_step
        )
    while trainer.step < resolved.steps:
        stats = trainer.take_step()
        at_budget = (
            deadline is not None and _past(deadline, world) and trainer.step < resolved.steps
        )
        last = trainer.step == resolved.steps or at_budget
        if val is not None and (
            last or (config.val_every and trainer.step % config.val_every == 0)
        ):
            before = trainer.elapsed
            val_kl = trainer.validate(val.tokens)
            stats = dataclasses.replace(
                stats,
                val_kl=val_kl,
                logit_val_kl=trainer.logit_val_kl,
                elapsed=trainer.elapsed,
                val_s=trainer.elapsed - before,
            )
        trainer.history.append(
            {
                "step": stats.step,
                "loss": stats.loss,
                "lr": stats.lr,
                "grad_norm": stats.grad_norm,
                "val_kl": stats.val_kl,
                "step_s": stats.step_s,
            }
        )
        if on_step is not None and world.is_primary:
            on_step(stats)
        stopped_early = config.patience is not None and trainer.stale >= config.patience
        checkpoint_due = config.checkpoint_every and (
            trainer.step % config.checkpoint_every == 0 or last or stopped_early
        )
        if directory is not None and checkpoint_due and world.is_primary:
            save_checkpoint(directory, trainer.state(lens.model_info, data_hash))
        world.barrier()
        if stopped_early or at_budget:
            break
    if trainer.best_state is not None:
        lens.translator.load_state_dict(trainer.best_state)
    val_kl = None
    if trainer.best_state is not None:
        entry = next(h for h in trainer.history if h["step"] == trainer.best_step)
        val_kl = entry["val_kl"]
    return TrainResult(
        lens=lens,
        config=config,
        resolved=resolved,
        val_kl=val_kl,
        best_step=trainer.best_step if trainer.best_state is not None else trainer.step,
        steps_done=trainer.step,
        stopped_early=stopped_early,
        wall_time=trainer.elapsed,
        lstsq_tokens=trainer.lstsq_tokens,
        history=trainer.history,
        stopped_at_budget=at_budget,
        logit_val_kl=trainer.logit_val_kl if val_kl is not None else None,
        seconds=dict(trainer.seconds),
        val_positions=0 if val is None else _cells(val.tokens, trainer.val_positions),
    )


def _cells(tokens: torch.Tensor, positions: torch.Tensor | None) -> int:
    return tokens.numel() if positions is None else positions.numel()


def _past(deadline: float, world: World) -> bool:
    """Whether ``deadline`` has passed on any process (so that all stop at the same step)."""
    flag = torch.tensor([float(time.monotonic() > deadline)])
    world.all_reduce_sum(flag)  # any process past the deadline stops them all
    return bool(flag.item() > 0)
