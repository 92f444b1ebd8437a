"""Cheap per-block scores of which decoder blocks matter, from one pass over calibration data.

- **Block influence** (ShortGPT, Men et al. 2024): ``BI_i = 1 − E_t[cos(x_i, x_{i+1})]``, the
  mean over every token of the cosine between block ``i``'s input and output. Our row ``L`` is
  the last block's output *before* the final norm (ShortGPT reads Hugging Face's normed last
  hidden state), so the last block is scored on the residual stream like every other.
- **Angular distance** (Gromov et al. 2024): ``d(ℓ, n) = arccos(cos(x_ℓ, x_{ℓ+n}))/π`` between
  the input of block ``ℓ`` and the output of block ``ℓ+n−1``; at the last token of each
  sequence as in the paper (``last_token``) and averaged over every token (``all_tokens``).
  Removing the run of ``n`` blocks that starts at ``argmin_ℓ d(ℓ, n)`` is Gromov's method.
- **Lens KL**: per lens, the mean over tokens of ``KL(lens at row ℓ+1 ‖ lens at row ℓ)``
  (bits): how much block ``ℓ`` changes what the lens reads; row ``L`` is the model's output.
  Every token, or ``lens_positions`` evenly spaced positions per sequence.

Every score is small for a block that can go.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from tunedlens.analyze.errors import AnalysisError
from tunedlens.arch.residuals import collect_residuals
from tunedlens.arch.resolve import ResolvedArch
from tunedlens.engine.core import readout
from tunedlens.lenses.lens import Lens
from tunedlens.metrics.divergence import NATS_TO_BITS, kl_divergence


class ScoreSums:
    """Running float64 sums of the cosines between every pair of rows (and lens KLs)."""

    def __init__(self, n_blocks: int, lens_names):
        rows = n_blocks + 1
        self.n_blocks = n_blocks
        self.cos_all = torch.zeros(rows, rows, dtype=torch.float64)
        self.angle_all = torch.zeros(rows, rows, dtype=torch.float64)
        self.angle_last = torch.zeros(rows, rows, dtype=torch.float64)
        self.lens_kl = {name: torch.zeros(n_blocks, dtype=torch.float64) for name in lens_names}
        self.tokens = 0
        self.lens_tokens = 0
        self.sequences = 0

    def add_states(self, hidden: tuple[torch.Tensor, ...]) -> None:
        """Add one batch's ``L + 1`` states ``(batch, seq, d)``: cosines of rows ``ℓ < m``."""
        # float64: a block that is the identity must score exactly 0 (arccos is steep near 1).
        units = [torch.nn.functional.normalize(h.double(), dim=-1, eps=1e-30) for h in hidden]
        for first in range(len(units)):
            for last in range(first + 1, len(units)):
                cos = (units[first] * units[last]).sum(-1).clamp(-1.0, 1.0)  # (batch, seq)
                angle = torch.arccos(cos) / math.pi
                self.cos_all[first, last] += cos.sum()
                self.angle_all[first, last] += angle.sum()
                self.angle_last[first, last] += angle[:, -1].sum()
        self.tokens += hidden[0].shape[0] * hidden[0].shape[1]
        self.sequences += hidden[0].shape[0]

    def add_lens_kl(self, name: str, kl_nats: torch.Tensor) -> None:
        """Add ``(batch, L, positions)`` KL(row ℓ+1 ‖ row ℓ) grids of one lens (nats)."""
        self.lens_kl[name] += kl_nats.double().sum((0, 2))
        if name == next(iter(self.lens_kl)):
            self.lens_tokens += kl_nats.shape[0] * kl_nats.shape[2]

    def block_influence(self) -> list[float]:
        """``(L,)`` ShortGPT block influence."""
        return [1.0 - float(self.cos_all[i, i + 1]) / self.tokens for i in range(self.n_blocks)]

    def angular(self, which: str) -> list[list[float | None]]:
        """``[n - 1][ℓ]``: mean angular distance of the run of ``n`` blocks starting at ``ℓ``.

        ``None`` where the run would pass the last block (``ℓ + n > L``).
        """
        sums, count = (
            (self.angle_last, self.sequences)
            if which == "last_token"
            else (self.angle_all, self.tokens)
        )
        rows = self.n_blocks + 1
        return [
            [
                float(sums[start, start + n]) / count if start + n < rows else None
                for start in range(self.n_blocks)
            ]
            for n in range(1, rows)
        ]

    def lens_scores(self) -> dict[str, list[float]]:
        """Per lens ``(L,)`` mean KL(row ℓ+1 ‖ row ℓ) in bits."""
        return {
            name: (sums / self.lens_tokens * NATS_TO_BITS).tolist()
            for name, sums in self.lens_kl.items()
        }


LOGPROB_BUDGET = 256 * 2**20
"""Bytes of full-vocabulary log-probabilities held at once by the lens scores."""


def score_blocks(
    model: nn.Module,
    lenses: Mapping[str, Lens],
    input_ids: torch.Tensor,
    *,
    arch: ResolvedArch,
    batch_size: int = 4,
    lens_positions: int | None = None,
) -> ScoreSums:
    """Every cheap score of every block, from ``input_ids`` ``(n, seq)``: one forward per batch.

    The lens readouts read the same residual states (``readout(states=...)``), so the model
    runs once per batch for all scores. ``lens_positions`` evenly spaced positions per sequence
    (default: all) are read by the lenses: their full-vocabulary readouts cost far more than
    the cosines, which always use every token.
    """
    sums = ScoreSums(arch.n_blocks, lenses)
    device = arch.unembed.weight.device
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        residuals = collect_residuals(model, ids, arch=arch, with_logits=False)
        sums.add_states(residuals.hidden)
        if lenses:
            seq = ids.shape[1]
            count = seq if lens_positions is None else min(seq, lens_positions)
            positions = torch.linspace(0, seq - 1, count).round().long().unique().tolist()
            _add_lens_kl(sums, model, lenses, ids, residuals, positions)
    return sums


def _add_lens_kl(sums: ScoreSums, model, lenses, ids, residuals, positions: list[int]) -> None:
    """Each lens's KL(row ℓ+1 ‖ row ℓ) at every position, a few positions at a time.

    One readout per chunk gives every row's full log-probabilities (one pass over the
    unembedding per row), and :func:`kl_divergence` compares neighbours: cheaper than pairing
    two ``keep_inputs`` readouts with :func:`~tunedlens.engine.core.divergences`, which passes
    over the unembedding four times per pair (both normalisers, then both distributions).
    """
    vocab = next(iter(lenses.values())).unembed.vocab_size
    per_position = ids.shape[0] * (sums.n_blocks + 1) * vocab * 4 * len(lenses)
    chunk = max(1, LOGPROB_BUDGET // per_position)
    for first in range(0, len(positions), chunk):
        part = positions[first : first + chunk]
        result = readout(
            model,
            dict(lenses),
            ids,
            states=residuals,
            positions=part,
            stats=(),
            top_k=0,
            logprobs=True,
        )
        for name in lenses:
            logprobs = result[name].logprobs  # (batch, rows, positions, vocab)
            sums.add_lens_kl(name, kl_divergence(logprobs[:, 1:], logprobs[:, :-1]))


def rank_values(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``(n,)`` values, ties given their average rank (as Spearman needs)."""
    below = (values[:, None] > values[None, :]).sum(1).double()
    equal = (values[:, None] == values[None, :]).sum(1).double()
    return below + (equal + 1) / 2


def spearman(first, second) -> float | None:
    """Spearman rank correlation of two equal-length sequences; ``None`` if either is constant.

    Pearson correlation of the tie-averaged ranks (what ``scipy.stats.spearmanr`` computes),
    in torch: no extra dependency.
    """
    x, y = torch.as_tensor(first, dtype=torch.float64), torch.as_tensor(second, dtype=torch.float64)
    if x.shape != y.shape or x.dim() != 1:
        raise AnalysisError(
            "spearman needs two 1-D sequences of one length, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    rx, ry = rank_values(x), rank_values(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    norm = float(rx.norm() * ry.norm())
    return None if norm == 0.0 else float((rx * ry).sum()) / norm
