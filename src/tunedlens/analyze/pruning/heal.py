"""Heal a pruned model cheaply: an affine map in front of its head, fitted on calibration data.

The cheap analogue of Gromov et al.'s fine-tuning step: the blocks stay frozen, and only a
translator ``h + W h + b`` (the tuned lens's affine form) on the last kept block's output is
learned, so that the model's head reads the pruned model's state as it reads the full model's.
``train_lens`` trains a translator per row toward the model's *own* output, which for a pruned
model is the pruned output itself, so the heal is fitted here instead, in two steps:

1. least squares of the full model's output state on the pruned one (ridge, the same
   second-moment solve as ``tunedlens.train.lstsq``);
2. ``steps`` AdamW steps on KL(full model ‖ healed) over random calibration tokens, with the
   fused KL of training (:func:`tunedlens.metrics.divergence.kl_to_target`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunedlens.lenses.lens import LogitLens
from tunedlens.lenses.translators import AffineTranslator
from tunedlens.metrics.divergence import NATS_TO_BITS, KLTarget, kl_to_target
from tunedlens.train.lstsq import MomentAccumulator


@dataclass(frozen=True)
class HealConfig:
    """How a pruned model is healed."""

    steps: int = 100
    """AdamW steps on KL after the least-squares fit (0: least squares only)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    batch_tokens: int = 256
    """Calibration tokens per step."""
    ridge: float = 1e-4
    """Ridge strength of the least-squares fit, relative to the mean second moment."""
    seed: int = 0
    """Seeds the choice of tokens per step."""


def fit_heal(
    head: LogitLens, pruned: torch.Tensor, full: torch.Tensor, config: HealConfig = HealConfig()
) -> tuple[AffineTranslator, list[float]]:
    """Fit ``h + W h + b`` so that ``head`` reads ``pruned`` states as it reads ``full`` ones.

    Args:
        head: The model's logit lens (its output row is the model's head).
        pruned: ``(n, seq, d)`` last kept block's outputs on calibration data.
        full: ``(n, seq, d)`` the full model's last block outputs on the same tokens.
        config: Steps, learning rate, tokens per step.

    Returns:
        The translator (one row, float32) and the mean KL (bits) on the sampled tokens after
        the least-squares fit and after each AdamW step.
    """
    d_model = pruned.shape[-1]
    x = pruned.reshape(-1, d_model).float()
    y = full.reshape(-1, d_model).float()
    moments = MomentAccumulator(1, d_model)
    moments.add((x, y))
    weight, bias = moments.solve(config.ridge)
    translator = AffineTranslator(1, d_model).to(head.unembed.device)
    with torch.no_grad():
        translator.weight.copy_(weight)
        translator.bias.copy_(bias)
    output_row = head.n_blocks
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(translator.parameters(), lr=config.lr, weight_decay=0.0)
    losses = []
    for step in range(config.steps + 1):
        index = torch.randint(
            0, x.shape[0], (min(config.batch_tokens, x.shape[0]),), generator=generator
        )
        with torch.no_grad():
            target = KLTarget(head(y[index], output_row).log_softmax(-1))
        loss = kl_to_target(target, head(translator(x[index], 0), output_row)).mean()
        losses.append(float(loss.detach()) * NATS_TO_BITS)
        if step == config.steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    translator.requires_grad_(False)
    return translator, losses


def healed_decoder(head: LogitLens, translator: AffineTranslator):
    """``state -> logits`` of the healed head (for greedy generation)."""
    return lambda state: head(translator(state.float(), 0), head.n_blocks)
