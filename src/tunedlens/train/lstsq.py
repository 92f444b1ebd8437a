"""Least-squares initialisation of affine translators from activation statistics.

For each layer ``i`` we fit ``h_i + h_i Wᵀ + b ≈ h_L`` (``h_L``: last block's output, before the
final norm) by ridge regression. Only second moments are accumulated, ``(d+1)²`` per layer, so
the cost is a small fraction of the forward pass over the same tokens, and it gives every
translator a sensible starting point before a single gradient step.
"""

from __future__ import annotations

import torch
from torch import nn

from tunedlens.arch.residuals import collect_residuals
from tunedlens.errors import InputError
from tunedlens.lenses.lens import TunedLens
from tunedlens.lenses.translators import AffineTranslator

PROGRESS_TOKENS = 1024
"""Tokens per forward pass of the phases that report progress per batch (least-squares start,
validation): a few seconds each on a CPU for a model of SmolLM2's size, so their bars move."""


def progress_batch(batch_size: int, seq_len: int) -> int:
    """Sequences per forward pass: at most ``batch_size`` and about :data:`PROGRESS_TOKENS`."""
    return max(1, min(batch_size, PROGRESS_TOKENS // seq_len))


class MomentAccumulator:
    """Running ``Σ x xᵀ`` and ``Σ x (h_L − h_i)ᵀ`` per layer, with ``x = [h_i, 1]``, in float64."""

    def __init__(self, n_rows: int, d_model: int):
        self.xx = torch.zeros(n_rows, d_model + 1, d_model + 1, dtype=torch.float64)
        self.xy = torch.zeros(n_rows, d_model + 1, d_model, dtype=torch.float64)
        self.count = 0

    def add(self, hidden: tuple[torch.Tensor, ...]) -> None:
        """Add one batch: ``L + 1`` states of shape ``(..., d)``."""
        final = hidden[-1].reshape(-1, hidden[-1].shape[-1]).float()
        ones = torch.ones(final.shape[0], 1)
        for layer in range(self.xx.shape[0]):
            x = torch.cat([hidden[layer].reshape(final.shape).float(), ones], dim=1)
            # float32 products per batch, float64 accumulation across batches
            self.xx[layer] += (x.T @ x).double()
            self.xy[layer] += (x.T @ (final - x[:, :-1])).double()
        self.count += final.shape[0]

    def solve(self, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
        """Ridge solution: ``(weight (L, d, d), bias (L, d))`` in the translator's convention."""
        d_model = self.xy.shape[-1]
        weights, biases = [], []
        for xx, xy in zip(self.xx, self.xy, strict=True):
            scale = xx.diagonal()[:d_model].mean().clamp_min(1e-12)
            penalty = torch.zeros_like(xx)
            penalty.diagonal()[:d_model] = ridge * scale  # the bias is not shrunk
            solution = torch.linalg.solve(xx + penalty, xy)  # (d+1, d) = [Wᵀ; b]
            weights.append(solution[:d_model].T)
            biases.append(solution[d_model])
        return torch.stack(weights).float(), torch.stack(biases).float()


def lstsq_init(
    lens: TunedLens,
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    batch_size: int = 8,
    ridge: float = 1e-4,
    all_reduce=None,
    progress=None,
    on_states=None,
) -> int:
    """Set every affine translator to its least-squares fit on ``tokens``.

    Args:
        lens: A lens with an :class:`AffineTranslator`.
        model: Its model.
        tokens: ``(n_sequences, seq_len)`` token ids to fit on.
        batch_size: Most sequences per forward pass (a pass holds about 1,024 tokens, so that
            progress moves every few seconds).
        ridge: Ridge strength relative to the mean activation second moment.
        all_reduce: In distributed runs, a function summing a tensor across processes.
        progress: Called with ``(sequences done, sequences)`` at the start and after every
            batch.
        on_states: Called after every forward pass with ``(index of its first sequence,
            states)``, the ``L + 1`` states ``(batch, seq_len, d)`` of the pass (training keeps
            those it will sample, instead of running the same sequences again).

    Returns:
        Number of tokens the fit used (over all processes).
    """
    if not isinstance(lens.translator, AffineTranslator):
        raise InputError("least-squares initialisation needs an affine translator")
    moments = MomentAccumulator(lens.output_row, lens.d_model)
    total = tokens.shape[0]
    if progress is not None:
        progress(0, total)
    batch_size = progress_batch(batch_size, tokens.shape[1])
    for start in range(0, total, batch_size):
        ids = tokens[start : start + batch_size].to(lens.unembed.device)
        residuals = collect_residuals(
            model, ids, arch=lens.unembed.arch, with_logits=False, points=lens.points
        )
        if on_states is not None:
            on_states(start, residuals.hidden)
        moments.add(tuple(h.cpu() for h in residuals.hidden))
        if progress is not None:
            progress(min(start + batch_size, total), total)
    count = torch.tensor(float(moments.count), dtype=torch.float64)
    if all_reduce is not None:
        for tensor in (moments.xx, moments.xy, count):
            all_reduce(tensor)
    weight, bias = moments.solve(ridge)
    with torch.no_grad():
        lens.translator.weight.copy_(weight)
        if lens.translator.bias is not None:
            lens.translator.bias.copy_(bias)
    return int(count.item())
