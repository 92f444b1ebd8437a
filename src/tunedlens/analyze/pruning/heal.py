"""Heal a pruned model cheaply: an affine map in front of its head, fitted on calibration data.

The cheap analogue of Gromov et al.'s fine-tuning step: the blocks stay frozen, and only a
translator ``h + W h + b`` (the tuned lens's affine form) on the last kept block's output is
learned, so that the model's head reads the pruned model's state as it reads the full model's.
``train_lens`` trains a translator per row toward the model's *own* output, which for a pruned
model is the pruned output itself, so the heal is fitted here instead:

1. the calibration sequences are split: a fifth is held out to choose, never to fit (whole
   sequences, when there are several: tokens of one text are too alike to judge a fit);
2. ridge least squares of the full model's output state on the pruned one (the second-moment
   solve of ``tunedlens.train.lstsq``) for each strength in ``ridges``; the held-out KL picks
   the best, or no map at all (the identity) when none helps: with fewer tokens than the
   residual width, an unregularised fit interpolates the calibration tokens and ruins the rest;
3. ``steps`` AdamW steps on KL(full model ‖ healed) over random fitting tokens, with the fused KL
   of training (:func:`tunedlens.metrics.divergence.kl_to_target`), keeping the parameters with
   the lowest held-out KL (checked every ``check_every`` steps).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from tunedlens.analyze.errors import AnalysisError
from tunedlens.lenses.lens import LogitLens
from tunedlens.lenses.translators import AffineTranslator
from tunedlens.metrics.divergence import NATS_TO_BITS, KLTarget, kl_to_target
from tunedlens.train.lstsq import MomentAccumulator


@dataclass(frozen=True)
class HealConfig:
    """How a pruned model is healed."""

    steps: int = 100
    """AdamW steps on KL after the least-squares fit (0: least squares only)."""
    lr: float = 1e-4
    """AdamW learning rate."""
    batch_tokens: int = 256
    """Fitting tokens per step."""
    ridges: tuple[float, ...] = (1e-4, 1e-2, 1.0)
    """Least-squares ridge strengths tried, relative to the mean second moment."""
    held_out: float = 0.2
    """Share of the calibration sequences (tokens, given one) held out to choose ridge and step."""
    check_every: int = 10
    """AdamW steps between held-out checks."""
    seed: int = 0
    """Seeds the split and the choice of tokens per step."""

    def __post_init__(self):
        if self.steps < 0 or self.batch_tokens < 1 or self.check_every < 1:
            raise AnalysisError("steps must be >= 0, batch_tokens and check_every >= 1")
        if not 0 < self.held_out < 1 or not self.ridges or min(self.ridges) <= 0:
            raise AnalysisError("held_out must lie in (0, 1) and ridges be positive")


class _HeldOut:
    """KL(full model ‖ head(translator(x))) in bits on the held-out tokens, in chunks."""

    def __init__(self, head: LogitLens, x: torch.Tensor, y: torch.Tensor, chunk: int = 256):
        self.head, self.x, self.chunk = head, x, chunk
        with torch.no_grad():
            self.targets = [
                KLTarget(head(y[i : i + chunk], head.n_blocks).log_softmax(-1))
                for i in range(0, len(y), chunk)
            ]

    @torch.no_grad()
    def __call__(self, translator: AffineTranslator | None) -> float:
        total = 0.0
        for index, target in enumerate(self.targets):
            x = self.x[index * self.chunk : (index + 1) * self.chunk]
            x = x if translator is None else translator(x, 0)
            total += float(kl_to_target(target, self.head(x, self.head.n_blocks)).double().sum())
        return total / len(self.x) * NATS_TO_BITS


def held_out_split(shape: torch.Size, config: HealConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices to fit on and to hold out: whole sequences when there are several.

    Tokens of one sequence are alike, so a held-out share cut across sequences would let an
    overfitted map look good; held-out sequences judge it on text it has not seen.
    """
    n_sequences, seq_len = (shape[0], shape[1]) if len(shape) == 3 else (1, int(shape[:-1].numel()))
    units, size = (n_sequences, seq_len) if n_sequences > 1 else (seq_len, 1)
    order = torch.randperm(units, generator=torch.Generator().manual_seed(config.seed))
    held = max(1, min(units - 1, round(config.held_out * units)))
    tokens = lambda picked: (picked[:, None] * size + torch.arange(size)).flatten()  # noqa: E731
    return tokens(order[held:]), tokens(order[:held])


def fit_heal(
    head: LogitLens, pruned: torch.Tensor, full: torch.Tensor, config: HealConfig = HealConfig()
) -> tuple[AffineTranslator | None, dict]:
    """Fit ``h + W h + b`` so that ``head`` reads ``pruned`` states as it reads ``full`` ones.

    Args:
        head: The model's logit lens (its output row is the model's head).
        pruned: ``(n, seq, d)`` last kept block's outputs on calibration sequences (or
            ``(tokens, d)``); at least 2 tokens.
        full: The full model's last block outputs on the same tokens, same shape.
        config: Ridges, steps, learning rate, held-out share.

    Returns:
        The translator (one row, float32), or ``None`` when no fit beats the identity on the
        held-out tokens; and the held-out KL (bits) of each stage: ``identity``,
        ``least_squares`` (per ridge), ``chosen_ridge``, ``steps`` (kept), ``final``.
    """
    d_model = pruned.shape[-1]
    x, y = pruned.reshape(-1, d_model).float(), full.reshape(-1, d_model).float()
    if x.shape[0] < 2:
        raise AnalysisError(
            "healing needs at least 2 calibration tokens (one to fit, one held out)"
        )
    fit, held = held_out_split(pruned.shape, config)
    held_kl = _HeldOut(head, x[held], y[held])
    log: dict = {"identity": held_kl(None), "least_squares": {}, "chosen_ridge": None}
    moments = MomentAccumulator(1, d_model)
    moments.add((x[fit], y[fit]))
    best, best_kl = None, log["identity"]
    for ridge in config.ridges:
        weight, bias = moments.solve(ridge)
        translator = AffineTranslator(1, d_model).to(head.unembed.device).requires_grad_(False)
        translator.weight.copy_(weight)
        translator.bias.copy_(bias)
        value = log["least_squares"][f"{ridge:g}"] = held_kl(translator)
        if value < best_kl:
            best, best_kl, log["chosen_ridge"] = translator, value, ridge
    best, best_kl, log["steps"] = _descend(head, x[fit], y[fit], best, best_kl, held_kl, config)
    log["final"] = best_kl
    return best, log


def _descend(head, x, y, start, start_kl, held_kl, config: HealConfig):
    """AdamW on KL from ``start`` (identity if None); the best held-out parameters and step."""
    translator = AffineTranslator(1, x.shape[-1]).to(head.unembed.device)
    if start is not None:
        translator.load_state_dict(start.state_dict())
    translator.requires_grad_(True)
    optimizer = torch.optim.AdamW(translator.parameters(), lr=config.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(config.seed + 1)
    best, best_kl, best_step = start, start_kl, 0
    for step in range(1, config.steps + 1):
        index = torch.randint(
            0, x.shape[0], (min(config.batch_tokens, x.shape[0]),), generator=generator
        )
        with torch.no_grad():
            target = KLTarget(head(y[index], head.n_blocks).log_softmax(-1))
        loss = kl_to_target(target, head(translator(x[index], 0), head.n_blocks)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % config.check_every == 0 or step == config.steps:
            value = held_kl(translator)
            if value < best_kl:
                best = copy.deepcopy(translator).requires_grad_(False)
                best_kl, best_step = value, step
    return best, best_kl, best_step


def healed_decoder(head: LogitLens, translator: AffineTranslator | None):
    """``state -> logits`` of the healed head (for greedy generation)."""
    if translator is None:
        return lambda state: head(state.float(), head.n_blocks)
    return lambda state: head(translator(state.float(), 0), head.n_blocks)
