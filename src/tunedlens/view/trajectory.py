"""Prediction trajectories: what a lens predicts at every layer and position of a prompt.

A :class:`PredictionTrajectory` is a :func:`tunedlens.readout` of one lens over rows
``0..output_row-1`` (``hidden_states[i]`` for block points) and the model's own output row, for a
batch of prompts of one length. Statistics are :class:`TrajectoryStat` grids ``(rows, seq)`` with
a name and units; a batch of prompts is averaged, and its top-token labels read ``*`` where the
prompts disagree. Full log-probabilities are kept only on request (``keep_logprobs=True``): every statistic,
including the divergences between two trajectories, is computed exactly by the readout engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from tunedlens.arch.points import row_label, row_point
from tunedlens.arch.residuals import token_ids
from tunedlens.engine.core import LensReadout, Readout, divergences, readout
from tunedlens.engine.stats import (
    PAIR_STATS,
    STATS,
    VIEW_STATS,
    StatInfo,
    TrajectoryStat,
    check_stats,
)
from tunedlens.errors import InputError, OutOfRange
from tunedlens.lenses.lens import Lens
from tunedlens.predict import LayerPrediction, check_position, layer_predictions
from tunedlens.view.tokens import format_token

RESIDUAL_COMPONENTS = ("resid_pre", "resid_mid", "resid_post")
_TRAJECTORY_STATS = ("entropy", "kl", "ce", "max-prob", "rank")
_HOVER_TOP_K = 5


@dataclass(frozen=True)
class PredictionTrajectory:
    """One lens's readout of every layer row and position of a batch of prompts."""

    result: Readout
    """The readout (one lens); its last row is the model's output."""
    input_ids: torch.Tensor
    """``(batch, seq)``."""
    rows: list[int]
    """The lens's row of each shown row (``0..output_row``); the last is the output row."""
    row_labels: list[str]
    """How each row is shown: ``"3"`` (``"3.mid"`` for a mid point), then ``"output"``."""
    tokenizer: object = None
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
        keep_logprobs: bool = False,
    ) -> PredictionTrajectory:
        """Run ``model`` on ``input_ids`` ``(seq,)`` or ``(batch, seq)`` and read every layer.

        Args:
            lens: The lens (logit or tuned) of ``model``.
            model: The causal LM.
            input_ids: Token ids; a batch must share one length.
            tokenizer: For token labels (optional).
            targets: Tokens to score (default: the next input token; none at the last position).
            anti_targets: Tokens to contrast with ``targets`` in :meth:`log_prob_diff`.
            layers: Layer rows to keep (default all ``0..L-1``); the output row is always kept.
                For a lens on mid or both points these are its rows (``0..2L-1`` for both).
            name: Label for figures.
            keep_logprobs: Also keep the full ``(batch, rows, seq, vocab)`` log-probabilities.
        """
        ids = _as_batch(input_ids, "input_ids")
        last = lens.output_row
        rows = list(range(last)) if layers is None else list(layers)
        if any(isinstance(r, bool) or not isinstance(r, int) or not 0 <= r < last for r in rows):
            raise OutOfRange(f"layers must be in 0..{last - 1}, got {rows}")
        rows.append(last)
        labels = [row_label(lens.points, row, lens.n_blocks) for row in rows]
        return cls._build(
            lens,
            model,
            ids,
            None,
            rows,
            rows,
            labels,
            tokenizer,
            targets,
            anti_targets,
            name,
            keep_logprobs,
        )

    @classmethod
    def from_lens_and_cache(
        cls,
        lens: Lens,
        cache: Mapping[str, torch.Tensor],
        input_ids: torch.Tensor | Sequence[int],
        model_logits: torch.Tensor | None = None,
        *,
        model: nn.Module | None = None,
        residual_component: str = "resid_pre",
        tokenizer=None,
        targets=None,
        anti_targets=None,
        name: str = "lens",
        keep_logprobs: bool = False,
    ) -> PredictionTrajectory:
        """Read a TransformerLens ``ActivationCache`` (or any mapping with its key names).

        ``resid_pre`` of block ``i`` is ``hidden_states[i]`` (translator ``i``); ``resid_post``
        of block ``i`` is ``hidden_states[i + 1]`` (translator ``i + 1``; the last block's is
        decoded as the output row is); ``resid_mid`` of block ``i`` is read with translator
        ``i``, which was trained on ``resid_pre`` (an approximation), unless the lens was trained
        on mid points (``points="mid"``: exact). The output row decodes the
        last block's ``resid_post`` with the model's float32 head.

        Args:
            lens: A lens of the model the cache came from.
            cache: Keys ``blocks.{i}.hook_{component}`` (and the last block's
                ``hook_resid_post``), values ``(batch, seq, d_model)``.
            input_ids: The ids the model ran on.
            model_logits: The model's logits ``(batch, seq, vocab)``, if at hand: checked
                against the output row, to catch a cache of another model.
            model: The Hugging Face model of ``lens`` (optional: the lens holds its head).
            residual_component: ``resid_pre``, ``resid_mid`` or ``resid_post``.
            tokenizer: For token labels (optional).
            targets: See :meth:`from_lens_and_model`.
            anti_targets: See :meth:`from_lens_and_model`.
            name: Label for figures.
            keep_logprobs: See :meth:`from_lens_and_model`.
        """
        if residual_component not in RESIDUAL_COMPONENTS:
            raise InputError(
                f"residual_component must be one of {RESIDUAL_COMPONENTS}, got {residual_component!r}"
            )
        if lens.points == "both" or (lens.points == "mid" and residual_component != "resid_mid"):
            raise InputError(
                f"this lens reads {lens.points!r} points; read a cache's resid_mid with a lens "
                "trained on mid points and its resid_pre/resid_post with a block lens"
            )
        ids = _as_batch(input_ids, "input_ids")
        n_blocks = lens.n_blocks

        def state(block: int, component: str) -> torch.Tensor:
            key = f"blocks.{block}.hook_{component}"
            if key not in cache:
                raise KeyError(f"the cache has no {key!r}; run the model with the cache enabled")
            value = cache[key]
            return value if value.dim() == 3 else value.unsqueeze(0)

        states = [state(block, residual_component) for block in range(n_blocks)]
        states.append(state(n_blocks - 1, "resid_post"))
        shift = 1 if residual_component == "resid_post" else 0
        # Block i's cached state is read by the lens's row i + shift (these lenses have one row
        # per block, and their output row is row L).
        rows = [block + shift for block in range(n_blocks)] + [lens.output_row]
        pairs = [(block, row) for block, row in enumerate(rows[:-1])] + [lens.output_row]
        # The last block's resid_post is the output row's state, read as a row of its own: it
        # keeps its index as its label, apart from the output row's.
        labels = [
            row_label(lens.points, row, lens.n_blocks) if row < lens.output_row else str(row)
            for row in rows[:-1]
        ] + ["output"]
        trajectory = cls._build(
            lens,
            model,
            ids,
            states,
            pairs,
            rows,
            labels,
            tokenizer,
            targets,
            anti_targets,
            name,
            keep_logprobs,
        )
        if model_logits is not None:
            _check_output_row(lens, states[-1], model_logits)
        return trajectory

    @classmethod
    def _build(
        cls,
        lens,
        model,
        ids,
        states,
        read,
        rows,
        labels,
        tokenizer,
        targets,
        anti_targets,
        name,
        keep_logprobs,
    ):
        if states is not None and tuple(states[0].shape[:2]) != tuple(ids.shape):
            raise InputError(
                f"input_ids {tuple(ids.shape)} do not match the states' (batch, seq) "
                f"{tuple(states[0].shape[:2])}"
            )
        targets = None if targets is None else _check_targets(targets, ids, "targets")
        anti = None if anti_targets is None else _check_targets(anti_targets, ids, "anti_targets")
        result = readout(
            model,
            {name: lens},
            ids,
            states=states,
            rows=read,
            stats=_TRAJECTORY_STATS,
            top_k=_HOVER_TOP_K,
            targets=targets,
            tokens=None if anti is None else anti[..., None],
            logprobs=keep_logprobs,
            keep_inputs=True,
        )
        return cls(
            result=result,
            input_ids=ids.cpu(),
            rows=rows,
            row_labels=labels,
            tokenizer=tokenizer,
            anti_targets=anti,
            name=name,
        )

    @property
    def lens(self) -> LensReadout:
        """The readout of this trajectory's lens."""
        return self.result[self.name]

    @property
    def targets(self) -> torch.Tensor:
        """``(batch, seq)`` the token each position is scored against (``-1``: none)."""
        return self.result.targets

    @property
    def logprobs(self) -> torch.Tensor:
        """``(batch, rows, seq, vocab)`` log-probabilities (kept with ``keep_logprobs=True``)."""
        if self.lens.logprobs is None:
            raise InputError(
                "this trajectory did not keep its log-probabilities; build it with "
                "keep_logprobs=True (every statistic is available without them)"
            )
        return self.lens.logprobs

    # ----------------------------------------------------------------------------- views
    @property
    def n_rows(self) -> int:
        """Shown rows, the output row included."""
        return len(self.rows)

    @property
    def n_blocks(self) -> int:
        """Number of decoder blocks ``L`` of the model."""
        return self.result.n_blocks

    @property
    def output_row(self) -> int:
        """The lens's output row (``L``; ``2L`` for both points), the last of :attr:`rows`."""
        return self.result.output_row

    def slice_positions(self, positions: slice | Sequence[int]) -> PredictionTrajectory:
        """Keep only some positions (e.g. ``slice(-8, None)``)."""
        index = (
            torch.arange(self.input_ids.shape[1])[positions]
            if isinstance(positions, slice)
            else torch.as_tensor(positions)
        )
        pick = lambda t: None if t is None else t[:, index]  # noqa: E731
        return replace(
            self,
            result=self.result.take(positions=index),
            input_ids=self.input_ids[:, index],
            anti_targets=pick(self.anti_targets),
        )

    def stride(self, step: int) -> PredictionTrajectory:
        """Every ``step``-th layer (with its mid point), always keeping the last and the output."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise InputError(f"the layer stride must be an integer >= 1, got {step!r}")
        blocks = [row_point(self.result.points, row)[0] for row in self.rows[:-1]]
        last = blocks[-1] if blocks else None
        keep = [index for index, block in enumerate(blocks) if block % step == 0 or block == last]
        keep.append(self.n_rows - 1)
        return replace(
            self,
            result=self.result.take(rows=keep),
            rows=[self.rows[i] for i in keep],
            row_labels=[self.row_labels[i] for i in keep],
        )

    # ------------------------------------------------------------------------ statistics
    def _stat(self, info: StatInfo, values: torch.Tensor, **kwargs) -> TrajectoryStat:
        """Average ``(batch, rows, seq)`` values over the batch into a labelled stat."""
        return TrajectoryStat(
            name=kwargs.pop("name", info.title),
            units=info.units,
            values=(values.double() * info.scale).mean(0).numpy(),
            row_labels=list(self.row_labels),
            column_labels=self._column_labels(),
            cell_labels=self.top_tokens(),
            hover=self._hover(),
            vmin=info.vmin,
            vmax=info.vmax,
            **kwargs,
        )

    def _column_labels(self) -> list[str]:
        ids = self.input_ids[0].tolist()
        if self.tokenizer is None:
            return [str(token) for token in ids]
        return [format_token(self.tokenizer, token) for token in ids]

    def top_tokens(self) -> list[list[str]] | None:
        """The figure's cell labels: each row's top-1 token at each position, as shown.

        A grid ``[row][position]`` of display strings (whitespace made visible, long tokens cut),
        ``*`` where the prompts of a batch disagree; ``None`` without a tokenizer. It labels
        cells rather than answering "what does layer ℓ predict": :meth:`predictions` does that,
        in :func:`tunedlens.predict_layers`' shape.
        """
        if self.tokenizer is None:
            return None
        top = self.lens.top_ids[..., 0]  # (batch, rows, seq)
        same = (top == top[:1]).all(0)
        return [
            [
                format_token(self.tokenizer, top[0, r, s]) if same[r, s] else "*"
                for s in range(top.shape[2])
            ]
            for r in range(top.shape[1])
        ]

    def predictions(
        self, position: int = -1, top_k: int = _HOVER_TOP_K, *, prompt: int = 0
    ) -> list[LayerPrediction]:
        """Each row's top-k tokens at one position, as :func:`tunedlens.predict_layers` gives them.

        The same :class:`~tunedlens.predict.LayerPrediction` rows, labelled as
        :attr:`layers` (``0``, ``"3.mid"``, ``"output"``), with the decoded token, its id and
        probability.

        Args:
            position: Among this trajectory's positions (negative counts from the end).
            top_k: Tokens per row, at most 5 (the trajectory keeps 5 per cell).
            prompt: Which prompt of the batch.
        """
        if self.tokenizer is None:
            raise InputError("this trajectory has no tokenizer; build it with tokenizer=...")
        batch = self.input_ids.shape[0]
        if isinstance(prompt, bool) or not isinstance(prompt, int) or not 0 <= prompt < batch:
            raise OutOfRange(f"prompt must be in 0..{batch - 1}, got {prompt!r}")
        at = check_position(position, self.input_ids.shape[1])
        return layer_predictions(
            self.lens,
            self.rows,
            self.row_labels,
            self.tokenizer,
            batch=prompt,
            position=at,
            top_k=top_k,
        )

    def _hover(self) -> list[list[str]] | None:
        if self.tokenizer is None:
            return None
        ids, probs = self.lens.top_ids[0], self.lens.top_probs[0]
        return [
            [
                "<br>".join(
                    f"{format_token(self.tokenizer, i)} {p:.3f}"
                    for i, p in zip(ids[r, s].tolist(), probs[r, s].tolist(), strict=True)
                )
                for s in range(ids.shape[1])
            ]
            for r in range(ids.shape[0])
        ]

    def cross_entropy(self) -> TrajectoryStat:
        """Cross-entropy to the targets, bits (NaN where a position has no target)."""
        return self._stat(STATS["ce"], self.lens["ce"])

    def rank(self) -> TrajectoryStat:
        """1-based rank of the target token (ties counted in its favour)."""
        return self._stat(STATS["rank"], self.lens["rank"])

    def entropy(self) -> TrajectoryStat:
        """Entropy of each prediction, bits."""
        return self._stat(STATS["entropy"], self.lens["entropy"])

    def kl_to_model(self) -> TrajectoryStat:
        """KL(model output ‖ lens), bits; 0 on the output row."""
        return self._stat(STATS["kl"], self.lens["kl"])

    def max_probability(self) -> TrajectoryStat:
        """Probability of the most likely token."""
        return self._stat(STATS["max-prob"], self.lens["max-prob"])

    def log_prob_diff(self, delta: bool = False) -> TrajectoryStat:
        """``log p(target) − log p(anti-target)``, nats; ``delta``: its change from the row above."""
        if self.anti_targets is None:
            raise InputError(
                "this statistic needs anti_targets; pass them when building the trajectory"
            )
        diff = -self.lens["ce"] - self.lens.token_logprobs[..., 0]
        if delta:
            diff = torch.cat([torch.zeros_like(diff[:, :1]), diff.diff(dim=1)], 1)
        info = StatInfo("log-prob difference" + (" (delta)" if delta else ""), "nats", "")
        return self._stat(info, diff)

    def _pair(self, other: PredictionTrajectory, stat: str) -> TrajectoryStat:
        if self.input_ids.shape != other.input_ids.shape or self.n_rows != other.n_rows:
            raise InputError(
                f"trajectories differ in shape {(self.n_rows, *self.input_ids.shape)} vs "
                f"{(other.n_rows, *other.input_ids.shape)}: compare prompts of the same token length"
            )
        values = divergences(self.result, other.result, self.name, other.name)[stat]
        return self._stat(PAIR_STATS[stat], values)

    def kl_divergence(self, other: PredictionTrajectory) -> TrajectoryStat:
        """KL(self ‖ other) per cell, bits."""
        return self._pair(other, "kl")

    def js_divergence(self, other: PredictionTrajectory) -> TrajectoryStat:
        """Jensen–Shannon divergence ``½KL(p‖m) + ½KL(q‖m)``, ``m = ½(p+q)``, bits (≤ 1)."""
        return self._pair(other, "js")

    def total_variation(self, other: PredictionTrajectory) -> TrajectoryStat:
        """Total variation distance ``½ Σ |p − q|`` (in [0, 1])."""
        return self._pair(other, "tv")

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

    STATS = VIEW_STATS

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
        check_stats(name, VIEW_STATS)
        return self._stat(STATS[name], self.lens[name])


def _check_output_row(lens: Lens, last_state: torch.Tensor, logits: torch.Tensor) -> None:
    logits = logits if logits.dim() == 3 else logits.unsqueeze(0)
    decoded = lens.unembed(last_state)
    if decoded.shape != logits.shape or not torch.allclose(
        decoded, logits.float().to(decoded.device), rtol=1e-3, atol=1e-3
    ):
        raise InputError(
            "the cache's last resid_post does not decode to model_logits: the cache, the logits "
            "and the lens must come from one model"
        )


def _as_batch(ids, what: str) -> torch.Tensor:
    ids = token_ids(ids, what)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[1] == 0:
        raise InputError(
            f"{what} must be (seq,) or (batch, seq) and not empty, got {tuple(ids.shape)}"
        )
    return ids.long()


def _check_targets(targets, ids: torch.Tensor, what: str) -> torch.Tensor:
    targets = _as_batch(targets, what)
    if targets.shape != ids.shape:
        raise InputError(
            f"{what} have shape {tuple(targets.shape)} but input_ids {tuple(ids.shape)}: give one "
            "token per position (-1 where none)"
        )
    return targets
