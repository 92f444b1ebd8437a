"""What removing blocks costs, measured on test data through the readout engine.

A pruned model's logits are its head on the last kept block's output, so each configuration
is measured by handing that state to :func:`tunedlens.readout` as a row of the full model's
residual stream: the logit lens decodes it (final norm and head, as the model does), and the
readout's ``kl`` (KL(full model ‖ row), nats), ``ce`` and ``model-rank`` are the pruned model's
KL to the full model, cross-entropy to the next token and top-1 agreement. Up to ``L``
configurations share one readout (rows ``0..L-1``; row ``L`` holds the full model's output).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from tunedlens.analyze.errors import AnalysisError
from tunedlens.analyze.removal import greedy_continuation, pruned_final_states
from tunedlens.arch.residuals import collect_residuals
from tunedlens.arch.resolve import ResolvedArch
from tunedlens.engine.core import readout
from tunedlens.lenses.lens import Lens, LogitLens
from tunedlens.metrics.divergence import NATS_TO_BITS

MEASURE_STATS = ("kl", "ce", "model-rank")


class MetricSums:
    """float64 sums of KL, cross-entropy and top-1 agreement for several configurations."""

    def __init__(self, n: int):
        self.kl = torch.zeros(n, dtype=torch.float64)
        self.ce = torch.zeros(n, dtype=torch.float64)
        self.top1 = torch.zeros(n, dtype=torch.float64)
        self.tokens = 0
        self.ce_tokens = 0

    def add(self, grids, has_next: torch.Tensor) -> None:
        """Add a readout's ``(batch, rows, positions)`` grids (one row per configuration)."""
        self.kl += grids["kl"].double().sum((0, 2))
        self.ce += grids["ce"].double().nan_to_num(0.0).sum((0, 2))
        self.top1 += (grids["model-rank"] == 1).double().sum((0, 2))
        self.tokens += grids["kl"].shape[0] * grids["kl"].shape[2]
        self.ce_tokens += int(has_next.sum())

    def results(self) -> list[dict]:
        """Per configuration: ``ce_bits``, ``kl_bits`` and ``top1_agree`` (means over tokens)."""
        return [
            {
                "ce_bits": float(self.ce[i]) / self.ce_tokens * NATS_TO_BITS,
                "kl_bits": float(self.kl[i]) / self.tokens * NATS_TO_BITS,
                "top1_agree": float(self.top1[i]) / self.tokens,
            }
            for i in range(len(self.kl))
        ]


class TestSet:
    """The test ids, the full model's output row on them, and the truncation readouts.

    Built with one forward pass per batch: the same pass reads every lens at rows
    ``L..L-K`` (the model truncated to ``L-k`` blocks, decoded by the lens).
    """

    def __init__(
        self,
        model: nn.Module,
        lenses: Mapping[str, Lens],
        test_ids: torch.Tensor,
        max_remove: int,
        *,
        arch: ResolvedArch,
        batch_size: int,
    ):
        self.model, self.arch, self.ids, self.batch_size = model, arch, test_ids, batch_size
        self.n_blocks = arch.n_blocks
        self.logit = LogitLens(model)
        device = arch.unembed.weight.device
        rows = [self.n_blocks - k for k in range(max_remove + 1)]  # k = 0: the model itself
        truncation = {name: MetricSums(len(rows)) for name in lenses}
        finals, model_ce, ce_tokens = [], 0.0, 0
        for start in range(0, test_ids.shape[0], batch_size):
            ids = test_ids[start : start + batch_size].to(device)
            residuals = collect_residuals(model, ids, arch=arch, with_logits=False)
            finals.append(residuals.hidden[-1])
            result = readout(
                model, dict(lenses), ids, states=residuals, rows=rows, stats=MEASURE_STATS, top_k=0
            )
            has_next = result.targets >= 0
            model_ce += float(result.model["ce"].double().nan_to_num(0.0).sum())
            ce_tokens += int(has_next.sum())
            for name in lenses:
                truncation[name].add(result[name], has_next)
        self.full_final = torch.cat(finals)
        self.ce_bits = model_ce / ce_tokens * NATS_TO_BITS
        self.truncation = {name: sums.results() for name, sums in truncation.items()}

    def measure(self, removals: Sequence[Sequence[int]]) -> list[dict]:
        """Metrics of the model with each set of blocks removed (one forward pass per set)."""
        out: list[dict] = []
        for first in range(0, len(removals), self.n_blocks):
            group = removals[first : first + self.n_blocks]
            finals = [
                pruned_final_states(
                    self.model, self.ids, removed, arch=self.arch, batch_size=self.batch_size
                )
                for removed in group
            ]
            out += self.measure_states(finals)
        return out

    def measure_states(self, finals: Sequence[torch.Tensor]) -> list[dict]:
        """Metrics of up to ``L`` final states ``(n, seq, d)`` decoded by the model's head."""
        if len(finals) > self.n_blocks:
            raise AnalysisError(
                f"measure at most {self.n_blocks} states at once, got {len(finals)}"
            )
        sums = MetricSums(len(finals))
        device = self.arch.unembed.weight.device
        for start in range(0, self.ids.shape[0], self.batch_size):
            part = slice(start, start + self.batch_size)
            full = self.full_final[part]
            states = [final[part] for final in finals]
            states += [full] * (self.n_blocks + 1 - len(states))
            result = readout(
                self.model,
                {"logit": self.logit},
                self.ids[part].to(device),
                states=states,
                rows=list(range(len(finals))),
                stats=MEASURE_STATS,
                top_k=0,
            )
            sums.add(result["logit"], result.targets >= 0)
        return sums.results()


def prefix_match(tokens: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over prompts of the fraction of tokens equal to ``reference`` before the first miss."""
    if tokens.shape[1] == 0:
        return 1.0
    same = (tokens == reference).long().cumprod(1)
    return float(same.sum(1).double().mean()) / tokens.shape[1]


def generation_match(
    model: nn.Module,
    prompts: torch.Tensor,
    reference: torch.Tensor,
    removed: Sequence[int],
    *,
    arch: ResolvedArch,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """How much of the full model's greedy continuation the pruned model reproduces (0..1)."""
    tokens = greedy_continuation(
        model, prompts, reference.shape[1], removed, arch=arch, decode=decode
    )
    return prefix_match(tokens, reference)


def lens_decoder(lens: Lens, row: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Decode a state of ``row`` with ``lens`` (the truncated model's head)."""
    return lambda state: lens(state, row)
