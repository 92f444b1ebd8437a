"""Exact full-vocabulary statistics of lens logits against the model's, without a vocab-sized copy.

The costly part of exact evaluation is the unembedding product, one ``(vocab x d_model)`` matrix
times every lens state. :class:`BlockedHead` computes it in vocabulary blocks, ``W_block @ uᵀ``
(the transposed product runs about a quarter faster on CPUs), and reduces each block while it is
still in cache (its maximum, ``Σ exp(z − max)`` taken in base 2, whose ``exp2`` is about twice as
fast as ``exp`` on CPUs, ``Σ exp(z − max) z``, the count above the model's top token); the blocks'
reductions are combined at the end, so the logits of all ``n`` positions never exist at once.

Positions are independent, so on a CPU they are split among worker threads, and the product runs
through numpy's OpenBLAS where that beats torch's MKL (:mod:`tunedlens.engine.threads`).

Everything else is algebra on ``d_model``-sized vectors where the head is linear (``z = s (W u + b)``):

- ``Σ_v p_v z_v = s (Wᵀp)·u + s p·b``: the model's distribution ``p`` is folded into ``Wᵀp`` once
  per position and reused by every lens and layer;
- ``Σ_v z_v`` and ``Σ_v z_v²`` (for the cosine to the model's logits) from ``Wᵀ1`` and ``WᵀW``.

Heads with a soft-cap (Gemma 2/3) are not linear; their blocks fold ``p`` and the centred final
logits in directly. From these reductions (``m = max z``, ``lse = m + log Σ exp(z − m)``):
KL(p ‖ q) = ``lse − Σ p z − H(p)``; cross-entropy to token t = ``lse − z_t``; entropy
``H(q) = lse − Σ q z``; rank of the model's top token = ``1 + #{v : z_v > z_top}``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tunedlens.engine.threads import Matmul, argmax_rows, choose_matmul, per_worker
from tunedlens.lenses.lens import Lens
from tunedlens.lenses.unembed import Unembed

Scale = float | torch.Tensor

_LOG2E = 1.0 / math.log(2.0)
# 2^-115 ≈ 2e-35 (e^-80): terms further below the maximum cannot change a float32 sum, and
# clamping them keeps exp2() off its slow path for results that would underflow.
_EXP2_FLOOR = -115.0
TIE = 1e-6
"""Logits within this relative distance of a ranked token's count as ties, in its favour."""
# Rows of the model's logits normalised at a time (a few MiB, so they stay in cache).
_SOFTMAX_ROWS = 16


@dataclass(frozen=True)
class FinalChunk:
    """The model's own next-token distribution at ``n`` positions, in the forms the kernel needs."""

    probs: torch.Tensor | None
    """``(n, vocab)`` probabilities (``None`` in a :meth:`light` stand-in)."""
    top: torch.Tensor
    """``(n,)`` the model's most likely token."""
    next_ids: torch.Tensor
    """``(n,)`` the token that follows each position; ``-1`` where there is none."""
    entropy: torch.Tensor
    """``(n,)`` entropy ``H(p)`` in nats (float64)."""
    cross_entropy: torch.Tensor
    """``(n,)`` the model's own cross-entropy to the next token, nats (0 without one)."""
    centred_norm: torch.Tensor
    """``(n,)`` norm of the model's logits minus their vocabulary mean (float64)."""
    probs_dot_weight: torch.Tensor | None
    """``(n, d)`` ``Wᵀp``, float64 (linear heads)."""
    probs_dot_bias: torch.Tensor
    """``(n,)`` ``p·b`` (0 without a bias), float64."""
    centred_dot_weight: torch.Tensor | None
    """``(n, d)`` ``Wᵀ(z − z̄)``, float64 (linear heads)."""
    centred_dot_bias: torch.Tensor | None
    """``(n,)`` ``(z − z̄)·b``, float64 (linear heads with a bias)."""
    centred: torch.Tensor | None
    """``(vocab, n)`` centred logits (non-linear heads only)."""

    @classmethod
    def light(cls, next_ids: torch.Tensor, d_model: int) -> FinalChunk:
        """A stand-in when no statistic needs the model's distribution.

        That is, no KL, cosine or model-rank: only the targets are real; ``probs`` is ``None``.
        """
        n, device = next_ids.shape[0], next_ids.device
        zeros = torch.zeros(n, dtype=torch.float64, device=device)
        return cls(
            probs=None,
            top=torch.zeros(n, dtype=torch.long, device=device),
            next_ids=next_ids,
            entropy=zeros,
            cross_entropy=zeros,
            centred_norm=zeros + 1,
            probs_dot_weight=torch.zeros(n, d_model, dtype=torch.float64, device=device),
            probs_dot_bias=zeros,
            centred_dot_weight=None,
            centred_dot_bias=None,
            centred=None,
        )

    def repeat(self, times: int, *, with_probs: bool) -> FinalChunk:
        """The same positions ``times`` over (``(times · n, ...)``), to read several rows at once.

        ``with_probs=False`` keeps ``probs`` as it is: linear heads never read it per position.
        """
        if times == 1:
            return self

        def tile(tensor, dim=0):
            if tensor is None:
                return None
            return tensor.repeat(*[times if d == dim else 1 for d in range(tensor.dim())])

        return FinalChunk(
            probs=tile(self.probs) if with_probs else self.probs,
            top=tile(self.top),
            next_ids=tile(self.next_ids),
            entropy=tile(self.entropy),
            cross_entropy=tile(self.cross_entropy),
            centred_norm=tile(self.centred_norm),
            probs_dot_weight=tile(self.probs_dot_weight),
            probs_dot_bias=tile(self.probs_dot_bias),
            centred_dot_weight=tile(self.centred_dot_weight),
            centred_dot_bias=tile(self.centred_dot_bias),
            centred=tile(self.centred, 1),
        )


@dataclass
class _Blockwise:
    """Reductions of each vocabulary block at ``n`` positions, float32.

    Stored per block and combined once at the end (:meth:`combine`), rather than folded into
    running totals block by block: fewer small operations per block, which matters when several
    worker threads share Python's interpreter lock.
    """

    max: torch.Tensor  # (blocks, n)
    total: torch.Tensor  # (blocks, n) Σ 2^((z − block max)·log2 e) = Σ e^(z − block max)
    weighted: torch.Tensor  # (blocks, n) Σ e^(z − block max) z
    above: torch.Tensor  # (blocks, ranked, n) #{z > threshold of each ranked token}

    @classmethod
    def empty(cls, blocks: int, ranked: int, n: int, device) -> _Blockwise:
        sums = (torch.zeros(blocks, n, device=device) for _ in range(3))
        return cls(*sums, torch.zeros(blocks, ranked, n, device=device))

    def combine(self) -> tuple[torch.Tensor, ...]:
        """``(max, Σ e^(z − max), Σ e^(z − max) z, #above (ranked, n))``, float64 sums."""
        top = self.max.amax(0)
        factor = torch.exp(self.max - top).double()
        total = (self.total.double() * factor).sum(0)
        weighted = (self.weighted.double() * factor).sum(0)
        return top, total, weighted, self.above.double().sum(0)


@dataclass(frozen=True)
class Extras:
    """What :meth:`BlockedHead.stats` computes besides its fixed statistics.

    Attributes:
        tokens: ``(m, n)`` token ids per position whose probability and rank are wanted.
        rank_model: Count the rank of the model's top token (``rank``, ``top1``).
        need_target: Compute the cross-entropy to ``final.next_ids`` (``ce``).
        rank_target: Also count the rank of ``final.next_ids`` (an extra pass over most blocks).
        top_k: Also return the ``top_k`` most likely tokens and their probabilities.
        logprobs: A ``(n, vocab)`` float32 tensor to fill with the full log-probabilities.
    """

    tokens: torch.Tensor | None = None
    rank_model: bool = True
    need_target: bool = True
    rank_target: bool = False
    top_k: int = 0
    logprobs: torch.Tensor | None = None


_MOMENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per unembedding module, its weight's float64 moments; an entry lives as long as the module
(keyed by the module, whose equality is identity: tensors compare elementwise)."""


def weight_moments(linear: torch.nn.Module) -> tuple:
    """``(WᵀW, Wᵀ1, Wᵀb, Σb, Σb²)`` of an unembedding in float64 (``Wᵀb``: ``None`` without bias).

    They are accumulated over row chunks. They cost a pass over the unembedding, so they are
    computed once per model (a notebook or a server reads one model many times) and recomputed
    if the weight's storage changes.
    """
    weight, bias = linear.weight, getattr(linear, "bias", None)
    cached = _MOMENTS.get(linear)
    if cached is not None and cached[0] == weight.data_ptr():
        return cached[1]
    d_model = weight.shape[1]
    gram = torch.zeros(d_model, d_model, dtype=torch.float64, device=weight.device)
    column_sums = torch.zeros(d_model, dtype=torch.float64, device=weight.device)
    bias64 = None if bias is None else bias.detach().double()
    weight_dot_bias = None if bias64 is None else torch.zeros_like(column_sums)
    with torch.no_grad():
        for start in range(0, weight.shape[0], 16384):
            rows = weight[start : start + 16384].double()
            gram += rows.T @ rows
            column_sums += rows.sum(0)
            if bias64 is not None:
                weight_dot_bias += rows.T @ bias64[start : start + 16384]
    bias_sum = 0.0 if bias64 is None else float(bias64.sum())
    bias_square = 0.0 if bias64 is None else float(bias64.square().sum())
    moments = (gram, column_sums, weight_dot_bias, bias_sum, bias_square)
    _MOMENTS[linear] = (weight.data_ptr(), moments)
    return moments


class BlockedHead:
    """The model's unembedding, applied in vocabulary blocks with fused reductions.

    Args:
        unembed: The head to decode with (lenses apply its final norm in :func:`head_input`).
        block_rows: Vocabulary rows per block (``block_rows x n`` floats stay in cache).
        cosine: Compute the cosine to the model's logits (``False``: ``cos`` is NaN, and the
            float64 moments of the unembedding are never built).
        matmul: Library for the float32 CPU products (see :func:`choose_matmul`).
        workers: Threads sharing the positions on a CPU (default: ``torch.get_num_threads()``).
    """

    def __init__(
        self,
        unembed: Unembed,
        block_rows: int = 2048,
        *,
        cosine: bool = True,
        matmul: Matmul | None = None,
        workers: int | None = None,
    ):
        self.unembed = unembed
        self.block_rows = block_rows
        self.cosine = cosine
        linear = unembed.unembedding
        self.weight = linear.weight.detach()
        bias = getattr(linear, "bias", None)
        self.bias = None if bias is None else bias.detach()
        self.softcap = unembed.arch.logit_softcap
        self.multiplier = unembed.arch.logit_multiplier or 1.0
        self.linear = self.softcap is None
        on_cpu = self.weight.device.type == "cpu"
        self.numpy_matmul = (
            on_cpu and self.weight.dtype == torch.float32 and choose_matmul(matmul) == "numpy"
        )
        self.workers = workers if workers is not None else torch.get_num_threads()
        if not on_cpu:
            self.workers = 1
        if self.linear and cosine:  # float64 moments of W: Σz, Σz² of any logits by d-sized algebra
            moments = weight_moments(linear)
            self.gram, self.column_sums, self.weight_dot_bias = moments[:3]
            self.bias_sum, self.bias_square = moments[3:]

    @property
    def vocab_size(self) -> int:
        """Rows of the unembedding."""
        return self.weight.shape[0]

    # -- threads and products ------------------------------------------------------------------

    def _per_worker(self, n: int, work: Callable[[slice], tuple]) -> list[tuple]:
        """``work`` on contiguous shares of ``n`` positions, one per worker thread, in order."""
        return per_worker(
            n,
            work,
            workers=self.workers,
            on_cpu=self.weight.device.type == "cpu",
            limit_blas=self.numpy_matmul,
        )

    def _product(self, left: torch.Tensor, right: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out = left @ right`` in float32 (either may be a low-precision weight slice)."""
        if self.numpy_matmul:
            np.matmul(left.detach().numpy(), right.detach().numpy(), out=out.numpy())
        else:
            torch.mm(left.float(), right.float(), out=out)
        return out

    def _finish(self, logits: torch.Tensor, scale: Scale) -> None:
        """The model's post-head transforms, then the lens's scale, in place.

        A tensor ``scale`` holds one factor per position (column), broadcast over the rows.
        """
        self.unembed.post_head(logits, inplace=True)
        if isinstance(scale, torch.Tensor) or scale != 1.0:
            logits.mul_(scale)

    def _blocks(self, inputs_t: torch.Tensor, scale: Scale):
        """Yield ``(start, logits)`` for vocabulary blocks: ``(rows, n)`` float32, post-head.

        ``inputs_t`` is ``(d, n)`` and contiguous; the block buffer is reused between yields.
        """
        buffer = torch.empty(self.block_rows, inputs_t.shape[1], device=inputs_t.device)
        for start in range(0, self.vocab_size, self.block_rows):
            weight = self.weight[start : start + self.block_rows]
            stop = start + weight.shape[0]
            block = self._product(weight, inputs_t, buffer[: weight.shape[0]])
            if self.bias is not None:
                block += self.bias[start:stop, None].float()
            self._finish(block, scale)
            yield start, block

    # -- the model's distribution ----------------------------------------------------------------

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor, scale: Scale = 1.0) -> torch.Tensor:
        """Full ``(n, vocab)`` logits of head inputs ``(n, d)``."""
        out = torch.empty(inputs.shape[0], self.vocab_size, device=inputs.device)

        def share(rows: slice) -> tuple:
            for start, block in self._blocks(inputs[rows].T.contiguous(), scale):
                out[rows, start : start + block.shape[0]] = block.T
            return ()

        self._per_worker(inputs.shape[0], share)
        return out

    @torch.no_grad()
    def final(self, inputs: torch.Tensor, next_ids: torch.Tensor) -> FinalChunk:
        """The model's distribution at ``n`` positions from its head inputs ``(n, d)``."""
        # Row-major: row-wise reductions are fast and accurate (pairwise sums).
        logits = self.logits(inputs)  # (n, vocab), overwritten with the probabilities
        n = logits.shape[0]
        mean = logits.mean(-1, dtype=torch.float64)
        centred = None
        if not self.linear and self.cosine:
            centred = (logits - mean.float()[:, None]).T.contiguous()
        parts = self._per_worker(n, lambda rows: self._softmax_rows(logits, next_ids, rows))
        top, entropy, next_lp, squares = (torch.cat(v) for v in zip(*parts, strict=True))
        probs = logits
        centred_norm = (squares - self.vocab_size * mean**2).clamp_min(0).sqrt()
        probs_dot_bias = torch.zeros_like(entropy)
        if self.bias is not None:
            for start in range(0, self.vocab_size, self.block_rows):
                stop = start + self.block_rows
                probs_dot_bias += probs[:, start:stop].double() @ self.bias[start:stop].double()
        common = dict(
            probs=probs,
            top=top,
            next_ids=next_ids,
            entropy=entropy,
            cross_entropy=torch.where(next_ids >= 0, -next_lp, 0.0),
            centred_norm=centred_norm,
            probs_dot_bias=probs_dot_bias,
        )
        if not self.linear:
            return FinalChunk(
                **common,
                probs_dot_weight=None,
                centred=centred,
                centred_dot_weight=None,
                centred_dot_bias=None,
            )
        probs_dot_weight = self._probs_dot_weight(probs)
        if not self.cosine:
            return FinalChunk(
                **common,
                probs_dot_weight=probs_dot_weight,
                centred=None,
                centred_dot_weight=None,
                centred_dot_bias=None,
            )
        # Wᵀz = s (G u + Wᵀb) and Wᵀ1: no second product with the vocabulary.
        u = inputs.double()
        weight_dot_logits = u @ self.gram
        if self.weight_dot_bias is not None:
            weight_dot_logits = weight_dot_logits + self.weight_dot_bias
        centred_dot_weight = self.multiplier * weight_dot_logits - mean[:, None] * self.column_sums
        centred_dot_bias = None
        if self.bias is not None:
            # z·b with z = s (W u + b), from d-sized algebra like the rest.
            logits_dot_bias = self.multiplier * (u @ self.weight_dot_bias + self.bias_square)
            centred_dot_bias = logits_dot_bias - mean * self.bias_sum
        return FinalChunk(
            **common,
            probs_dot_weight=probs_dot_weight,
            centred=None,
            centred_dot_weight=centred_dot_weight,
            centred_dot_bias=centred_dot_bias,
        )

    def _softmax_rows(self, logits: torch.Tensor, next_ids: torch.Tensor, rows: slice) -> tuple:
        """Softmax of ``logits[rows]`` in place, a few rows at a time while they are in cache.

        Returns the rows' top token, entropy, next-token log-prob and Σ z², all float64 but the
        token. Sums along a row are float32 with torch's cascaded summation, accurate to ~1e-7.
        """
        results = []
        # A GPU takes all rows at once (no cache to stay in; fewer, larger kernels).
        step = _SOFTMAX_ROWS if logits.device.type == "cpu" else max(1, rows.stop - rows.start)
        scratch = torch.empty(step, self.vocab_size, device=logits.device)
        for first in range(rows.start, rows.stop, step):
            group = slice(first, min(first + step, rows.stop))
            z, work = logits[group], scratch[: group.stop - group.start]
            top_logit = z.amax(-1, keepdim=True)
            top = argmax_rows(z)
            squares = torch.mul(z, z, out=work).sum(-1).double()
            next_logit = z.gather(-1, next_ids[group].clamp_min(0)[:, None])[:, 0].double()
            torch.sub(z, top_logit, out=work).mul_(_LOG2E).clamp_(min=_EXP2_FLOOR).exp2_()
            total = work.sum(-1).double()
            lse = top_logit[:, 0].double() + total.log()
            weighted = torch.mul(work, z, out=z).sum(-1).double()
            torch.div(work, total.float()[:, None], out=z)  # the probabilities
            results.append((top, lse - weighted / total, next_logit - lse, squares))
        return tuple(torch.cat(values) for values in zip(*results, strict=True))

    def _probs_dot_weight(self, probs: torch.Tensor) -> torch.Tensor:
        """``Wᵀp`` per position ``(n, d)``: float32 block products summed in float64."""
        d_model = self.weight.shape[1]
        out = torch.zeros(probs.shape[0], d_model, dtype=torch.float64, device=probs.device)

        def share(rows: slice) -> tuple:
            part = torch.empty(rows.stop - rows.start, d_model, device=probs.device)
            for start in range(0, self.vocab_size, self.block_rows):
                stop = min(start + self.block_rows, self.vocab_size)
                out[rows] += self._product(probs[rows, start:stop], self.weight[start:stop], part)
            return ()

        self._per_worker(probs.shape[0], share)
        return out

    # -- lens statistics -----------------------------------------------------------------------

    @torch.no_grad()
    def stats(
        self, inputs: torch.Tensor, final: FinalChunk, scale: Scale = 1.0, extras: Extras = Extras()
    ) -> dict:
        """Statistics of the logits of head inputs ``(n, d)`` against the model's distribution.

        Args:
            inputs: States after the final norm (and any projection before the unembedding).
            final: The model's distribution at the same positions.
            scale: Extra factor on the logits (a lens's learned inverse temperature): one
                number, or ``(n,)`` float64 factors, one per position.
            extras: Token probabilities and ranks, top-k, full log-probabilities.

        Returns:
            ``(n,)`` tensors: ``kl``, ``ce`` (to ``final.next_ids``; 0 where there is none),
            ``entropy`` (all nats), ``rank`` (1-based rank of the model's top token), ``top1``
            (1.0 where the model's top token is the lens's), ``confidence`` (the lens's top
            probability), ``cos`` (cosine of the lens's and the model's centred logits),
            ``has_next``; with ``extras``: ``target_rank`` (of ``final.next_ids``),
            ``token_logprob``/``token_rank`` ``(n, m)``, ``top_ids``/``top_probs`` ``(n, k)``.
        """
        parts = self._per_worker(
            inputs.shape[0], lambda rows: self._fold(inputs, final, scale, rows, extras)
        )
        folded = [
            torch.cat(values, -1) for values in zip(*(part[0] for part in parts), strict=True)
        ]
        (top, total, weighted, above, dot_probs, dot_centred, sums, squares) = folded
        gathered = torch.cat([part[1] for part in parts], -1)  # (2 + m, n)
        lse = top.double() + total.log()
        if self.linear:
            u, factor = inputs.double(), self.multiplier * scale
            dot_probs = factor * ((final.probs_dot_weight * u).sum(-1) + final.probs_dot_bias)
        if final.centred_dot_weight is not None:
            dot_centred, sums, squares = self._linear_moments(inputs, final, scale)
        spread = (squares - sums.square() / self.vocab_size).clamp_min(0).sqrt()
        cos = dot_centred / (spread * final.centred_norm).clamp_min(1e-300)
        if not self.cosine:
            cos = torch.full_like(cos, torch.nan)
        kl = (lse - dot_probs - final.entropy).clamp_min(0.0).float()
        out = {
            "kl": kl if final.probs is not None else torch.full_like(kl, torch.nan),
            "entropy": (lse - weighted / total).clamp_min(0.0).float(),
            "confidence": (top.double() - lse).exp().float(),
            "cos": cos.float(),
            "has_next": final.next_ids >= 0,
        }
        if extras.need_target:
            out["ce"] = torch.where(final.next_ids >= 0, lse - gathered[1].double(), 0.0).float()
        counted = iter(above)  # ranked tokens in order: the model's top, the target, the tokens
        if extras.rank_model:
            model_above = next(counted)
            out["rank"], out["top1"] = 1 + model_above.float(), (model_above == 0).float()
        if extras.rank_target:
            out["target_rank"] = 1 + next(counted).float()
        if extras.tokens is not None:
            out["token_logprob"] = (gathered[2:].double() - lse).float().T
            out["token_rank"] = 1 + torch.stack(list(counted)).float().T
        if extras.top_k:
            values = torch.cat([part[2] for part in parts], -1)  # (k, n)
            ids = torch.cat([part[3] for part in parts], -1)
            out["top_probs"] = (values.double() - lse).exp().float().T
            out["top_ids"] = ids.T
        if extras.logprobs is not None:
            extras.logprobs.sub_(lse.float()[:, None])
        return out

    def _fold(self, inputs, final: FinalChunk, scale: Scale, rows: slice, extras: Extras):
        """One worker's positions: every vocabulary block reduced, then the blocks combined."""
        inputs_t = inputs[rows].T.contiguous()
        if isinstance(scale, torch.Tensor):
            scale = scale[rows]
        ids = [final.top[rows], final.next_ids[rows].clamp_min(0)]
        if extras.tokens is not None:
            ids += list(extras.tokens[:, rows])
        # Only the logits that a requested statistic uses (each costs an n x n product).
        wanted = [extras.rank_model, extras.need_target or extras.rank_target]
        wanted += [True] * (len(ids) - 2)
        picked = [index for index, need in enumerate(wanted) if need]
        gathered = torch.zeros(len(ids), inputs_t.shape[1], device=inputs.device)
        if picked:
            gathered[picked] = self._logits_at(
                inputs_t, torch.stack([ids[i] for i in picked]), scale
            )
        which = [0] * extras.rank_model + [1] * extras.rank_target + list(range(2, len(ids)))
        ranked = gathered[which]
        # Logits within float32 round-off of a ranked token's count as ties (in the token's
        # favour), not as above it, should two products round apart.
        thresholds = ranked + TIE * ranked.abs().clamp_min(1.0)
        n, device = inputs_t.shape[1], inputs.device
        n_blocks = -(-self.vocab_size // self.block_rows)
        blocks = _Blockwise.empty(n_blocks, len(thresholds), n, device)
        extra = torch.zeros(4, n, dtype=torch.float64, device=device)  # non-linear heads
        scratch = torch.empty(self.block_rows, n, device=device)
        k = extras.top_k
        top_values = torch.full((k, n), -torch.inf, device=device)  # running top-k, descending
        top_ids = torch.zeros(k, n, dtype=torch.long, device=device)
        for index, (start, block) in enumerate(self._blocks(inputs_t, scale)):
            stop = start + block.shape[0]
            work = scratch[: block.shape[0]]
            if not self.linear and final.probs is not None:
                extra[0] += torch.mul(final.probs[rows, start:stop].T, block, out=work).sum(0)
                if final.centred is not None:
                    centred = final.centred[start:stop, rows]
                    extra[1] += torch.mul(centred, block, out=work).sum(0)
                    extra[2] += block.sum(0)
                    extra[3] += torch.mul(block, block, out=work).sum(0)
            if extras.logprobs is not None:
                extras.logprobs[rows, start:stop] = block.T
            fold_block(block, thresholds, blocks, index, work)
            if k:
                _merge_top(block, start, blocks.max[index], top_values, top_ids)
        result = ((*blocks.combine(), *extra), gathered)
        return (*result, top_values, top_ids) if k else result

    @torch.no_grad()
    def divergences(
        self, inputs: torch.Tensor, scale: float, other: torch.Tensor, other_scale: float
    ) -> dict:
        """Pairwise divergences of two sets of head inputs ``(n, d)``, position by position.

        Two passes over the vocabulary: the first finds each distribution's log-normaliser,
        the second sums the divergences block by block (nats, float64 sums).

        Returns:
            ``(n,)`` float32 tensors: ``js`` (Jensen–Shannon, ``½KL(p‖m) + ½KL(q‖m)``),
            ``kl`` (KL(p ‖ q)) and ``tv`` (total variation, ``½ Σ |p − q|``).
        """
        lse = [self._log_normaliser(inputs, scale), self._log_normaliser(other, other_scale)]

        def share(rows: slice) -> tuple:
            sums = torch.zeros(4, rows.stop - rows.start, dtype=torch.float64, device=inputs.device)
            first = self._blocks(inputs[rows].T.contiguous(), scale)
            second = self._blocks(other[rows].T.contiguous(), other_scale)
            for (_, p_block), (_, q_block) in zip(first, second, strict=True):
                log_p = p_block - lse[0][rows].float()
                log_q = q_block - lse[1][rows].float()
                p, q = log_p.exp(), log_q.exp()
                log_m = torch.logaddexp(log_p, log_q) - math.log(2)
                sums[0] += (p * (log_p - log_m)).sum(0).double()
                sums[1] += (q * (log_q - log_m)).sum(0).double()
                sums[2] += (p * (log_p - log_q)).sum(0).double()
                sums[3] += (p - q).abs().sum(0).double()
            return (sums,)

        sums = torch.cat([part[0] for part in self._per_worker(inputs.shape[0], share)], -1)
        return {
            "js": (0.5 * (sums[0] + sums[1])).clamp_min(0).float(),
            "kl": sums[2].clamp_min(0).float(),
            "tv": (0.5 * sums[3]).float(),
        }

    def _log_normaliser(self, inputs: torch.Tensor, scale: float) -> torch.Tensor:
        """``(n,)`` float64 log-sum-exp of the logits of head inputs ``(n, d)``."""
        n_blocks = -(-self.vocab_size // self.block_rows)

        def share(rows: slice) -> tuple:
            inputs_t = inputs[rows].T.contiguous()
            n = inputs_t.shape[1]
            blocks = _Blockwise.empty(n_blocks, 0, n, inputs.device)
            scratch = torch.empty(self.block_rows, n, device=inputs.device)
            no_thresholds = torch.empty(0, n, device=inputs.device)
            for index, (_, block) in enumerate(self._blocks(inputs_t, scale)):
                fold_block(block, no_thresholds, blocks, index, scratch[: block.shape[0]])
            top, total, _, _ = blocks.combine()
            return (top.double() + total.log(),)

        return torch.cat([part[0] for part in self._per_worker(inputs.shape[0], share)])

    def _logits_at(self, inputs_t: torch.Tensor, ids: torch.Tensor, scale: Scale) -> torch.Tensor:
        """Logits of the tokens ``ids`` ``(k, n)`` at each position: ``(k, n)``.

        Computed as the diagonal of a small product, with the same library and operations as
        the blocks, so they round like the blocks do (a plain dot product differs by ~1e-6).
        """
        rows = []
        n = inputs_t.shape[1]
        for token_ids in ids:
            product = torch.empty(n, n, device=inputs_t.device)
            logits = self._product(self.weight[token_ids], inputs_t, product).diagonal().clone()
            if self.bias is not None:
                logits += self.bias[token_ids].float()
            self._finish(logits, scale)
            rows.append(logits)
        return torch.stack(rows)

    def _linear_moments(self, inputs: torch.Tensor, final: FinalChunk, scale: Scale):
        """``Σ (z_f − z̄_f) z``, ``Σ z`` and ``Σ z²`` from float64 ``d``-sized algebra."""
        u = inputs.double()
        factor = self.multiplier * scale
        dot_centred = (final.centred_dot_weight * u).sum(-1)
        sums = u @ self.column_sums
        squares = ((u @ self.gram) * u).sum(-1)
        if self.bias is not None:
            dot_centred = dot_centred + final.centred_dot_bias
            squares = squares + 2 * (u @ self.weight_dot_bias) + self.bias_square
            sums = sums + self.bias_sum
        return dot_centred * factor, sums * factor, squares * factor**2


@torch.no_grad()
def head_input(lens: Lens, hidden: torch.Tensor, layer: int) -> tuple[torch.Tensor, float]:
    """What ``lens`` feeds the unembedding for ``layer``, and the scale it puts on the logits.

    ``lens.unembed.post_head(unembedding(head_input)) * scale`` are the lens's logits.
    """
    log_scale = lens.log_logit_scale(layer)
    inputs = lens.unembed.head_input(lens.transform(hidden, layer))
    return inputs, 1.0 if log_scale is None else float(torch.exp(log_scale))


def _merge_top(block, start: int, block_max, top_values, top_ids) -> None:
    """Fold one ``(rows, n)`` block into the running top-k ``(k, n)`` (values descending).

    Only the positions whose block maximum beats their current k-th best are searched: after
    the first blocks that is few of them, so top-k costs little more than the block's maximum.
    """
    k = top_values.shape[0]
    columns = torch.nonzero(block_max > top_values[k - 1], as_tuple=True)[0]
    if not columns.numel():
        return
    every = columns.numel() == block.shape[1]
    candidates = block if every else block[:, columns]
    if k == 1:  # a maximum, not a sort: the block's best already beats the running one
        values, where = torch.max(candidates, 0)
        if every:
            top_values[0], top_ids[0] = values, where + start
        else:
            top_values[0, columns], top_ids[0, columns] = values, where + start
        return
    values, where = torch.topk(candidates, min(k, block.shape[0]), dim=0)
    pool_values = torch.cat([top_values if every else top_values[:, columns], values])
    pool_ids = torch.cat([top_ids if every else top_ids[:, columns], where + start])
    best, pick = torch.topk(pool_values, k, dim=0)
    if every:
        top_values.copy_(best)
        top_ids.copy_(pool_ids.gather(0, pick))
    else:
        top_values[:, columns] = best
        top_ids[:, columns] = pool_ids.gather(0, pick)


def fold_block(
    block: torch.Tensor,
    thresholds: torch.Tensor,
    out: _Blockwise,
    index: int,
    scratch: torch.Tensor,
) -> None:
    """Reduce one ``(rows, n)`` block of logits into row ``index`` of ``out``.

    ``exp(x) = 2^(x·log2 e)``: ``exp2`` runs about twice as fast as ``exp`` on CPUs. The count
    of logits above each threshold ``(ranked, n)`` is skipped for blocks whose maximum is below
    it (most blocks once a lens agrees with the model).
    """
    block_max = torch.amax(block, 0, out=out.max[index])
    on_cpu = block.device.type == "cpu"
    for which, threshold in enumerate(thresholds):
        if not on_cpu or bool((block_max > threshold).any()):
            torch.sum(torch.gt(block, threshold, out=scratch), 0, out=out.above[index, which])
    torch.sub(block, block_max, out=scratch).mul_(_LOG2E).clamp_(min=_EXP2_FLOOR).exp2_()
    torch.sum(scratch, 0, out=out.total[index])
    torch.sum(scratch.mul_(block), 0, out=out.weighted[index])
