"""Running sums of per-position statistics, per layer and per sequence, and their summaries."""

from __future__ import annotations

import torch

from tunedlens.metrics.divergence import NATS_TO_BITS

# Expected calibration error: equal-width confidence bins.
ECE_BINS = 15
_SUMMED = ("kl", "ce", "entropy", "rank", "top1", "top5", "cos")


class LayerAccumulator:
    """Sums of a lens's statistics for ``n_rows`` layer rows over ``n_sequences`` sequences.

    Sums are float64 and kept per sequence, so means are exact averages over tokens and
    confidence intervals can resample whole sequences.
    """

    def __init__(self, n_rows: int, n_sequences: int):
        shape = (n_rows, n_sequences)
        self.sums = {name: torch.zeros(shape, dtype=torch.float64) for name in _SUMMED}
        self.tokens = torch.zeros(shape, dtype=torch.float64)
        self.ce_tokens = torch.zeros(shape, dtype=torch.float64)
        self.calibration = torch.zeros(n_rows, ECE_BINS, 3, dtype=torch.float64)

    def add(
        self,
        row: int,
        sequence: torch.Tensor,
        stats: dict[str, torch.Tensor],
        has_next: torch.Tensor,
    ) -> None:
        """Add one batch's ``(n,)`` readout statistics (see ``EVAL_STATS``).

        ``sequence`` gives each position's sequence, ``has_next`` whether it has a next token.
        """
        has_next = has_next.double()
        rank = stats["model-rank"].double()
        values = {
            "kl": stats["kl"].double(),
            "ce": stats["ce"].double().nan_to_num(0.0) * has_next,
            "entropy": stats["entropy"].double(),
            "rank": rank,
            "top1": (rank == 1).double(),
            "top5": (rank <= 5).double(),
            "cos": stats["cos"].double(),
        }
        for name in _SUMMED:
            self.sums[name][row].index_add_(0, sequence, values[name])
        self.tokens[row].index_add_(0, sequence, torch.ones_like(has_next))
        self.ce_tokens[row].index_add_(0, sequence, has_next)
        confidence = stats["max-prob"].double()
        bins = (confidence * ECE_BINS).long().clamp_(0, ECE_BINS - 1)
        cell = torch.stack([torch.ones_like(confidence), confidence, values["top1"]], -1)
        self.calibration[row].index_add_(0, bins, cell)

    def mean(self, name: str) -> torch.Tensor:
        """``(n_rows,)`` mean over every token (cross-entropy: every token with a successor)."""
        count = self.ce_tokens if name == "ce" else self.tokens
        return self.sums[name].sum(1) / count.sum(1)

    def ece(self) -> torch.Tensor:
        """``(n_rows,)`` expected calibration error of the lens's top-1 against the model's."""
        count, confidence, correct = self.calibration.unbind(-1)
        gaps = (confidence - correct).abs()
        return gaps.sum(1) / count.sum(1)

    def interval(
        self, name: str, resamples: int, seed: int, level: float = 0.95
    ) -> torch.Tensor | None:
        """``(n_rows, 2)`` bootstrap percentile interval of the mean, resampling sequences.

        ``None`` with fewer than two sequences (there is nothing to resample).
        """
        n_sequences = self.tokens.shape[1]
        if n_sequences < 2 or resamples < 1:
            return None
        count = self.ce_tokens if name == "ce" else self.tokens
        generator = torch.Generator().manual_seed(seed)
        picks = torch.randint(n_sequences, (resamples, n_sequences), generator=generator)
        weights = torch.zeros(resamples, n_sequences, dtype=torch.float64)
        weights.scatter_add_(1, picks, torch.ones_like(picks, dtype=torch.float64))
        means = (weights @ self.sums[name].T) / (weights @ count.T)  # (resamples, n_rows)
        tail = (1 - level) / 2
        bounds = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0)
        return bounds.T


def to_bits(values: torch.Tensor) -> list:
    """Nats to bits, as nested Python floats."""
    return (values * NATS_TO_BITS).tolist()
