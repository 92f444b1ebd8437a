"""Prediction trajectories: what a lens predicts at every layer and position of a prompt.

A :class:`PredictionTrajectory` holds lens log-probabilities ``(batch, rows, seq, vocab)``:
rows ``0..L-1`` are the lens at ``hidden_states[i]`` and the last row is the model's own output.
Statistics are :class:`TrajectoryStat` grids ``(rows, seq)`` with a name and units; a batch of
prompts is averaged, and its top-token labels read ``*`` where the prompts disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from tunedlens.arch.residuals import collect_residuals
from tunedlens.lenses.lens import Lens
from tunedlens.metrics.divergence import NATS_TO_BITS, kl_divergence
from tunedlens.view.tokens import format_token

RESIDUAL_COMPONENTS = ("resid_pre", "resid_mid", "resid_post")


@dataclass(frozen=True)
class TrajectoryStat:
    """A named ``(rows, seq)`` grid of one statistic, ready to plot."""

    name: str
    units: str
    values: np.ndarray
    row_labels: list[str]
    column_labels: list[str]
    cell_labels: list[list[str]] | None = None
    """Text per cell (the top-1 token), or ``None``."""
    hover: list[list[str]] | None = None
    """Hover text per cell (top-k tokens with probabilities), or ``None``."""
    vmin: float | None = None
    vmax: float | None = None

    def clip(self, low: float | None = None, high: float | None = None) -> TrajectoryStat:
        """Clip the values (and the colour scale) to ``[low, high]``."""
        values = np.clip(self.values, low, high)
        return replace(self, values=values, vmin=low, vmax=high)


def _entropy_bits(logprobs: torch.Tensor) -> torch.Tensor:
    probs = logprobs.exp()
    return -(probs * torch.where(probs > 0, logprobs, 0.0)).sum(-1) * NATS_TO_BITS


@dataclass(frozen=True)
class PredictionTrajectory:
    """Lens log-probabilities for every layer row and position of a batch of prompts."""

    logprobs: torch.Tensor
    """``(batch, rows, seq, vocab)`` float32; the last row is the model's output."""
    input_ids: torch.Tensor
    """``(batch, seq)``."""
    layers: list[int | str]
    """Row labels: layer indices, then ``"output"``."""
    tokenizer: object = None
    targets: torch.Tensor | None = None
    """``(batch, seq)`` token each position should predict; ``-1`` where none (the last)."""
    anti_targets: torch.Tensor | None = None
    name: str = "lens"

    @classmethod
    def from_lens_and_model(
        cls,
        lens: Lens,
        model: nn.Module,
        input_ids: torch.Tensor | Sequence[int],
        *,
        tokenizer=None,
        targets: torch.Tensor | Sequence[int] | None = None,
        anti_targets: torch.Tensor | Sequence[int] | None = None,
        layers: Sequence[int] | None = None,
        name: str = "lens",
    ) -> PredictionTrajectory:
        """Run ``model`` on ``input_ids`` ``(seq,)`` or ``(batch, seq)`` and decode every layer.

        Args:
            lens: The lens (logit or tuned) of ``model``.
            model: The causal LM.
            input_ids: Token ids; a batch must share one length.
            tokenizer: For token labels (optional).
            targets: Tokens to score (default: the next input token; none at the last position).
            anti_targets: Tokens to contrast with ``targets`` in :meth:`log_prob_diff`.
            layers: Layer rows to keep (default all ``0..L-1``); the output row is always kept.
            name: Label for figures.
        """
        ids = _as_batch(input_ids, "input_ids")
        residuals = collect_residuals(model, ids.to(lens.unembed.device), arch=lens.unembed.arch)
        rows = list(range(lens.n_layers)) if layers is None else list(layers)
        if any(not 0 <= row < lens.n_layers for row in rows):
            raise IndexError(f"layers must be in 0..{lens.n_layers - 1}, got {rows}")
        hidden = [residuals.hidden[row] for row in rows]
        return cls._build(lens, hidden, rows, residuals.logits, ids, tokenizer, targets,
                          anti_targets, name)  # fmt: skip

    @classmethod
    def from_lens_and_cache(
        cls,
        lens: Lens,
        cache: Mapping[str, torch.Tensor],
        input_ids: torch.Tensor | Sequence[int],
        model_logits: torch.Tensor,
        *,
        residual_component: str = "resid_pre",
        tokenizer=None,
        targets=None,
        anti_targets=None,
        name: str = "lens",
    ) -> PredictionTrajectory:
        """Decode a TransformerLens ``ActivationCache`` (or any mapping with its key names).

        ``resid_pre`` of block ``i`` is ``hidden_states[i]`` (translator ``i``); ``resid_post``
        of block ``i`` is ``hidden_states[i + 1]`` (translator ``i + 1``; the last block's is
        decoded as the output row would be); ``resid_mid`` of block ``i`` is read with
        translator ``i``, which was trained on ``resid_pre`` (an approximation).

        Args:
            lens: A lens of the model the cache came from.
            cache: Keys ``blocks.{i}.hook_{component}``, values ``(batch, seq, d_model)``.
            input_ids: The ids the model ran on.
            model_logits: The model's logits ``(batch, seq, vocab)``.
            residual_component: ``resid_pre``, ``resid_mid`` or ``resid_post``.
            tokenizer: For token labels (optional).
            targets: See :meth:`from_lens_and_model`.
            anti_targets: See :meth:`from_lens_and_model`.
            name: Label for figures.
        """
        if residual_component not in RESIDUAL_COMPONENTS:
            raise ValueError(
                f"residual_component must be one of {RESIDUAL_COMPONENTS}, got {residual_component!r}"
            )
        ids = _as_batch(input_ids, "input_ids")
        hidden, rows = [], []
        for block in range(lens.n_layers):
            key = f"blocks.{block}.hook_{residual_component}"
            if key not in cache:
                raise KeyError(f"the cache has no {key!r}; run the model with the cache enabled")
            state = cache[key]
            hidden.append(state if state.dim() == 3 else state.unsqueeze(0))
            rows.append(block + 1 if residual_component == "resid_post" else block)
        logits = model_logits if model_logits.dim() == 3 else model_logits.unsqueeze(0)
        return cls._build(lens, hidden, rows, logits, ids, tokenizer, targets, anti_targets, name)

    @classmethod
    def _build(cls, lens, hidden, rows, model_logits, ids, tokenizer, targets, anti_targets, name):
        if hidden[0].shape[:2] != ids.shape:
            raise ValueError(
                f"input_ids {tuple(ids.shape)} do not match the states' (batch, seq) "
                f"{tuple(hidden[0].shape[:2])}"
            )
        with torch.no_grad():
            logprobs = [
                lens(state, row).log_softmax(-1) for state, row in zip(hidden, rows, strict=True)
            ]
            logprobs.append(model_logits.float().to(logprobs[0].device).log_softmax(-1))
        default = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -1)], 1)
        return cls(
            logprobs=torch.stack(logprobs, 1).cpu(),
            input_ids=ids.cpu(),
            layers=[*rows, "output"],
            tokenizer=tokenizer,
            targets=default if targets is None else _check_targets(targets, ids, "targets"),
            anti_targets=None if anti_targets is None else _check_targets(anti_targets, ids, "anti_targets"),
            name=name,
        )  # fmt: skip

    # ----------------------------------------------------------------------------- views
    @property
    def n_rows(self) -> int:
        """Layer rows plus the output row."""
        return self.logprobs.shape[1]

    def slice_positions(self, positions: slice | Sequence[int]) -> PredictionTrajectory:
        """Keep only some positions (e.g. ``slice(-8, None)``)."""
        index = (
            torch.arange(self.input_ids.shape[1])[positions]
            if isinstance(positions, slice)
            else torch.as_tensor(positions)
        )
        pick = lambda t: None if t is None else t[:, index]  # noqa: E731
        return replace(self, logprobs=self.logprobs[:, :, index], input_ids=self.input_ids[:, index],
                       targets=pick(self.targets), anti_targets=pick(self.anti_targets))  # fmt: skip

    def stride(self, step: int) -> PredictionTrajectory:
        """Every ``step``-th layer row, always keeping the last layer and the output row."""
        if step < 1:
            raise ValueError(f"step must be >= 1, got {step}")
        keep = sorted(set(range(0, self.n_rows - 1, step)) | {self.n_rows - 2, self.n_rows - 1})
        return replace(self, logprobs=self.logprobs[:, keep], layers=[self.layers[i] for i in keep])

    # ------------------------------------------------------------------------ statistics
    def _stat(self, name, units, values: torch.Tensor, **kwargs) -> TrajectoryStat:
        """Average ``(batch, rows, seq)`` values over the batch into a labelled stat."""
        return TrajectoryStat(
            name=name,
            units=units,
            values=values.double().mean(0).numpy(),
            row_labels=[str(label) for label in self.layers],
            column_labels=self._column_labels(),
            cell_labels=self.top_tokens(),
            hover=self._hover(),
            **kwargs,
        )

    def _column_labels(self) -> list[str]:
        ids = self.input_ids[0].tolist()
        if self.tokenizer is None:
            return [str(token) for token in ids]
        return [format_token(self.tokenizer, token) for token in ids]

    def top_tokens(self, k: int = 1) -> list[list[str]] | None:
        """Top-1 token label per cell; ``*`` where prompts of a batch disagree."""
        if self.tokenizer is None:
            return None
        top = self.logprobs.argmax(-1)  # (batch, rows, seq)
        same = (top == top[:1]).all(0)
        return [
            [format_token(self.tokenizer, top[0, r, s]) if same[r, s] else "*"
             for s in range(top.shape[2])]
            for r in range(top.shape[1])
        ]  # fmt: skip

    def _hover(self, k: int = 5) -> list[list[str]] | None:
        if self.tokenizer is None:
            return None
        probs, ids = self.logprobs[0].exp().topk(k, dim=-1)
        return [
            ["<br>".join(f"{format_token(self.tokenizer, i)} {p:.3f}"
                         for i, p in zip(ids[r, s].tolist(), probs[r, s].tolist(), strict=True))
             for s in range(ids.shape[1])]
            for r in range(ids.shape[0])
        ]  # fmt: skip

    def _target_logprobs(
        self, targets: torch.Tensor, what: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if targets is None:
            raise ValueError(f"this statistic needs {what}; pass them when building the trajectory")
        valid = targets >= 0
        index = targets.clamp_min(0)[:, None, :, None].expand(-1, self.n_rows, -1, 1)
        return self.logprobs.gather(-1, index)[..., 0], valid[:, None, :].expand(
            -1, self.n_rows, -1
        )

    def cross_entropy(self) -> TrajectoryStat:
        """Cross-entropy to the targets, bits (NaN where a position has no target)."""
        logprob, valid = self._target_logprobs(self.targets, "targets")
        values = torch.where(valid, -logprob * NATS_TO_BITS, torch.nan)
        return self._stat("cross-entropy", "bits", values)

    def rank(self) -> TrajectoryStat:
        """1-based rank of the target token (ties counted in its favour)."""
        logprob, valid = self._target_logprobs(self.targets, "targets")
        ranks = 1 + (self.logprobs > logprob[..., None]).sum(-1)
        return self._stat("rank", "rank", torch.where(valid, ranks.double(), torch.nan))

    def entropy(self) -> TrajectoryStat:
        """Entropy of each prediction, bits."""
        return self._stat("entropy", "bits", _entropy_bits(self.logprobs))

    def kl_to_model(self) -> TrajectoryStat:
        """KL(model output ‖ lens), bits; 0 on the output row."""
        model = self.logprobs[:, -1:].expand_as(self.logprobs)
        return self._stat(
            "KL to the model", "bits", kl_divergence(model, self.logprobs) * NATS_TO_BITS
        )

    def max_probability(self) -> TrajectoryStat:
        """Probability of the most likely token."""
        return self._stat(
            "max probability", "probability", self.logprobs.amax(-1).exp(), vmin=0.0, vmax=1.0
        )

    def log_prob_diff(self, delta: bool = False) -> TrajectoryStat:
        """``log p(target) − log p(anti-target)``, nats; ``delta``: its change from the row above."""
        target, valid = self._target_logprobs(self.targets, "targets")
        anti, anti_valid = self._target_logprobs(self.anti_targets, "anti_targets")
        diff = torch.where(valid & anti_valid, target - anti, torch.nan)
        if delta:
            diff = torch.cat([torch.zeros_like(diff[:, :1]), diff.diff(dim=1)], 1)
        return self._stat("log-prob difference" + (" (delta)" if delta else ""), "nats", diff)

    def _paired(self, other: PredictionTrajectory) -> torch.Tensor:
        if other.logprobs.shape != self.logprobs.shape:
            raise ValueError(
                f"trajectories differ in shape {tuple(self.logprobs.shape)} vs "
                f"{tuple(other.logprobs.shape)}: compare prompts of the same token length"
            )
        return other.logprobs

    def kl_divergence(self, other: PredictionTrajectory) -> TrajectoryStat:
        """KL(self ‖ other) per cell, bits."""
        return self._stat(
            "KL", "bits", kl_divergence(self.logprobs, self._paired(other)) * NATS_TO_BITS
        )

    def js_divergence(self, other: PredictionTrajectory) -> TrajectoryStat:
        """Jensen–Shannon divergence ``½KL(p‖m) + ½KL(q‖m)``, ``m = ½(p+q)``, bits (≤ 1)."""
        q = self._paired(other)
        mixture = torch.logaddexp(self.logprobs, q) - math.log(2)
        value = 0.5 * (kl_divergence(self.logprobs, mixture) + kl_divergence(q, mixture))
        return self._stat(
            "Jensen–Shannon divergence", "bits", value * NATS_TO_BITS, vmin=0.0, vmax=1.0
        )

    def total_variation(self, other: PredictionTrajectory) -> TrajectoryStat:
        """Total variation distance ``½ Σ |p − q|`` (in [0, 1])."""
        q = self._paired(other)
        value = 0.5 * (self.logprobs.exp() - q.exp()).abs().sum(-1)
        return self._stat("total variation", "probability", value, vmin=0.0, vmax=1.0)

    def difference(self, other: PredictionTrajectory) -> TrajectoryStat:
        """Where two prompts of equal token length diverge: JS divergence per cell.

        Cells are labelled with both top-1 tokens (``a/b``) where they differ.
        """
        divergence = self.js_divergence(other)
        mine, theirs = self.top_tokens(), other.top_tokens()
        if mine is None or theirs is None:
            return divergence
        labels = [
            [a if a == b else f"{a}/{b}" for a, b in zip(row_a, row_b, strict=True)]
            for row_a, row_b in zip(mine, theirs, strict=True)
        ]
        return replace(divergence, cell_labels=labels)

    STATS = ("entropy", "kl", "ce", "max-prob", "rank")

    def plot(self, *stats: str, path=None):
        """A plotly heatmap figure, one panel per statistic (default entropy).

        Shown inline in Jupyter. With ``path`` (``.html`` or ``.png``) it is also written there.
        """
        from tunedlens.plot import trajectory_figures

        chosen = [self.stat(name) for name in (stats or ("entropy",))]
        if path is not None:
            trajectory_figures.save(chosen, path, title=self.name)
        return trajectory_figures.figure(chosen, title=self.name)

    def stat(self, name: str) -> TrajectoryStat:
        """A statistic by its CLI name: ``entropy``, ``kl``, ``ce``, ``max-prob`` or ``rank``."""
        table = {"entropy": self.entropy, "kl": self.kl_to_model, "ce": self.cross_entropy,
                 "max-prob": self.max_probability, "rank": self.rank}  # fmt: skip
        if name not in table:
            raise ValueError(
                f"unknown statistic {name!r}; choose one of {', '.join(self.STATS)} or all"
            )
        return table[name]()


def _as_batch(ids, what: str) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise ValueError(
            f"{what} must be (seq,) or (batch, seq) and not empty, got {tuple(ids.shape)}"
        )
    return ids.long()


def _check_targets(targets, ids: torch.Tensor, what: str) -> torch.Tensor:
    targets = _as_batch(targets, what)
    if targets.shape != ids.shape:
        raise ValueError(
            f"{what} have shape {tuple(targets.shape)} but input_ids {tuple(ids.shape)}: give one "
            "token per position (-1 where none)"
        )
    return targets
