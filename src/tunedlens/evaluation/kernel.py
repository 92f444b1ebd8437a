"""Exact full-vocabulary statistics of lens logits against the model's, without a vocab-sized copy.

The costly part of exact evaluation is the unembedding product, one ``(vocab x d_model)`` matrix
times every lens state. :class:`BlockedHead` computes it in vocabulary blocks, ``W_block @ uᵀ``
(the transposed product runs about a quarter faster on CPUs), and folds each block into running
reductions while it is still in cache (an online log-sum-exp), so the logits of all ``n``
positions never exist at once and each is read from memory once.

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

from dataclasses import dataclass

import torch

from tunedlens.lenses.lens import Lens
from tunedlens.lenses.unembed import Unembed

# exp(-80) ≈ 2e-35: terms further below the maximum cannot change a float32 sum, and clamping
# them keeps exp() off its slow path for results that would underflow.
_EXP_FLOOR = -80.0
_TIE = 1e-6


@dataclass(frozen=True)
class FinalChunk:
    """The model's own next-token distribution at ``n`` positions, in the forms the kernel needs."""

    probs: torch.Tensor
    """``(vocab, n)`` probabilities."""
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
    centred_dot_weight: torch.Tensor | None
    """``(n, d)`` ``Wᵀ(z − z̄)``, float64 (linear heads)."""
    centred_dot_bias: torch.Tensor | None
    """``(n,)`` ``(z − z̄)·b``, float64 (linear heads with a bias)."""
    centred: torch.Tensor | None
    """``(vocab, n)`` centred logits (non-linear heads only)."""


class BlockedHead:
    """The model's unembedding, applied in vocabulary blocks with fused reductions.

    Args:
        unembed: The head to decode with (lenses apply its final norm in :func:`head_input`).
        block_rows: Vocabulary rows per block (``block_rows x n`` floats stay in cache).
        cosine: Compute the cosine to the model's logits (``False``: ``cos`` is NaN, and the
            float64 moments of the unembedding are never built).
    """

    def __init__(self, unembed: Unembed, block_rows: int = 2048, *, cosine: bool = True):
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
        if self.linear and cosine:  # float64 moments of W: Σz, Σz² of any logits by d-sized algebra
            self._weight_moments()

    def _weight_moments(self) -> None:
        """``WᵀW``, ``Wᵀ1`` and the bias terms in float64, accumulated over row chunks."""
        d_model = self.weight.shape[1]
        self.gram = torch.zeros(d_model, d_model, dtype=torch.float64, device=self.weight.device)
        self.column_sums = torch.zeros(d_model, dtype=torch.float64, device=self.weight.device)
        bias = None if self.bias is None else self.bias.double()
        self.weight_dot_bias = None if bias is None else torch.zeros_like(self.column_sums)
        for start in range(0, self.vocab_size, 16384):
            rows = self.weight[start : start + 16384].double()
            self.gram += rows.T @ rows
            self.column_sums += rows.sum(0)
            if bias is not None:
                self.weight_dot_bias += rows.T @ bias[start : start + 16384]
        self.bias_sum = 0.0 if bias is None else float(bias.sum())
        self.bias_square = 0.0 if bias is None else float(bias.square().sum())

    @property
    def vocab_size(self) -> int:
        """Rows of the unembedding."""
        return self.weight.shape[0]

    def _blocks(self, inputs: torch.Tensor, scale: float):
        """Yield ``(start, logits)`` for vocabulary blocks: ``(rows, n)`` float32, post-head."""
        buffer = torch.empty(self.block_rows, inputs.shape[0], device=inputs.device)
        inputs_t = inputs.T.contiguous()  # one copy, not one per block inside the product
        for start in range(0, self.vocab_size, self.block_rows):
            weight = self.weight[start : start + self.block_rows]
            block = buffer[: weight.shape[0]]
            torch.mm(weight.float(), inputs_t, out=block)
            if self.bias is not None:
                block += self.bias[start : start + weight.shape[0], None].float()
            self._finish(block, scale)
            yield start, block

    def _finish(self, logits: torch.Tensor, scale: float) -> None:
        """The model's post-head transforms, then the lens's scale, in place."""
        self.unembed.post_head(logits, inplace=True)
        if scale != 1.0:
            logits.mul_(scale)

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Full ``(vocab, n)`` logits of head inputs ``(n, d)``."""
        out = torch.empty(self.vocab_size, inputs.shape[0], device=inputs.device)
        for start, block in self._blocks(inputs, scale):
            out[start : start + block.shape[0]] = block
        return out

    @torch.no_grad()
    def final(self, inputs: torch.Tensor, next_ids: torch.Tensor) -> FinalChunk:
        """The model's distribution at ``n`` positions from its head inputs ``(n, d)``."""
        # Row-major here: row-wise reductions are fast and accurate (pairwise sums), and the
        # probabilities are transposed once for the vocabulary-major blocks of every lens.
        logits = self.logits(inputs).T.contiguous()  # (n, vocab)
        # Normalised with a float64 sum: float32 log-softmax is off by ~1e-5 relative, which
        # KL = lse − Σ p z − H(p) would amplify by the size of the logits.
        top_logit = logits.amax(-1, keepdim=True)
        probs = (logits - top_logit).exp_()
        total = probs.sum(-1, dtype=torch.float64)
        lse = top_logit[:, 0].double() + total.log()
        probs.div_(total.float()[:, None])
        entropy = lse - (probs * logits).sum(-1, dtype=torch.float64)
        next_lp = logits.gather(-1, next_ids.clamp_min(0)[:, None])[:, 0].double() - lse
        mean = logits.mean(-1, dtype=torch.float64)
        squares = (logits * logits).sum(-1, dtype=torch.float64)
        centred_norm = (squares - logits.shape[-1] * mean**2).clamp_min(0).sqrt()
        common = dict(
            probs=probs.T.contiguous(),
            top=logits.argmax(-1),
            next_ids=next_ids,
            entropy=entropy,
            cross_entropy=torch.where(next_ids >= 0, -next_lp, 0.0),
            centred_norm=centred_norm,
        )
        del probs
        if not self.cosine or not self.linear:
            centred = logits.sub_(mean.float()[:, None]).T.contiguous() if self.cosine else None
            return FinalChunk(
                **common, centred=centred, centred_dot_weight=None, centred_dot_bias=None
            )
        # Wᵀz = s (G u + Wᵀb) and Wᵀ1: no second product with the vocabulary.
        u = inputs.double()
        weight_dot_logits = u @ self.gram
        if self.weight_dot_bias is not None:
            weight_dot_logits = weight_dot_logits + self.weight_dot_bias
        centred_dot_weight = self.multiplier * weight_dot_logits - mean[:, None] * self.column_sums
        centred_dot_bias = None
        if self.bias is not None:
            centred_dot_bias = logits.double() @ self.bias.double() - mean * self.bias_sum
        return FinalChunk(
            **common,
            centred=None,
            centred_dot_weight=centred_dot_weight,
            centred_dot_bias=centred_dot_bias,
        )

    @torch.no_grad()
    def stats(self, inputs: torch.Tensor, final: FinalChunk, scale: float = 1.0) -> dict:
        """Statistics of the logits of head inputs ``(n, d)`` against the model's distribution.

        Args:
            inputs: States after the final norm (and any projection before the unembedding).
            final: The model's distribution at the same positions.
            scale: Extra factor on the logits (a lens's learned inverse temperature).

        Returns:
            ``(n,)`` tensors: ``kl``, ``ce`` (0 where there is no next token), ``entropy`` (all
            nats), ``rank`` (1-based rank of the model's top token), ``top1`` (1.0 where the
            model's top token is the lens's), ``confidence`` (the lens's top probability),
            ``cos`` (cosine of the lens's and the model's logits, both centred), ``has_next``.
        """
        n, device, _f64 = inputs.shape[0], inputs.device, torch.float64
        ids = torch.stack([final.top, final.next_ids.clamp_min(0)])
        top_logit, next_logit = self._logits_at(inputs, ids, scale)
        # Logits within float32 round-off of the model's top token's count as ties (in the
        # lens's favour), not as above it, should a matrix library round the two products apart.
        threshold = top_logit + _TIE * top_logit.abs().clamp_min(1.0)
        running_max = torch.full((n,), -torch.inf, device=device)
        zeros = [torch.zeros(n, dtype=torch.float64, device=device) for _ in range(6)]
        total, weighted, above, dot_probs, dot_centred, squares = zeros
        sums = zeros[0].clone()
        for start, block in self._blocks(inputs, scale):
            stop = start + block.shape[0]
            running_max, total, weighted, above, dot_probs = fold_block(
                block, final.probs[start:stop], threshold, running_max, total, weighted, above,
                dot_probs,
            )  # fmt: skip
            if final.centred is not None:
                dot_centred += (final.centred[start:stop] * block).sum(0)
                sums += block.sum(0)
                squares += (block * block).sum(0)
        lse = running_max.double() + total.log()
        if final.centred_dot_weight is not None:
            dot_centred, sums, squares = self._linear_moments(inputs, final, scale)
        spread = (squares - sums.square() / self.vocab_size).clamp_min(0).sqrt()
        cos = dot_centred / (spread * final.centred_norm).clamp_min(1e-300)
        if not self.cosine:
            cos = torch.full_like(cos, torch.nan)
        return {
            "kl": (lse - dot_probs - final.entropy).clamp_min(0.0).float(),
            "ce": torch.where(final.next_ids >= 0, lse - next_logit.double(), 0.0).float(),
            "entropy": (lse - weighted / total).clamp_min(0.0).float(),
            "rank": 1 + above.float(),
            "top1": (above == 0).float(),
            "confidence": (running_max.double() - lse).exp().float(),
            "cos": cos.float(),
            "has_next": final.next_ids >= 0,
        }

    def _logits_at(self, inputs: torch.Tensor, ids: torch.Tensor, scale: float) -> torch.Tensor:
        """Logits of the tokens ``ids`` ``(k, n)`` at each position: ``(k, n)``.

        Computed as the diagonal of a small product, with the same operations as the blocks, so
        they round like the blocks do (a plain dot product differs by ~1e-6 relative).
        """
        rows = []
        for token_ids in ids:
            logits = torch.mm(self.weight[token_ids].float(), inputs.T).diagonal().clone()
            if self.bias is not None:
                logits += self.bias[token_ids].float()
            self._finish(logits, scale)
            rows.append(logits)
        return torch.stack(rows)

    def _linear_moments(self, inputs: torch.Tensor, final: FinalChunk, scale: float):
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


def fold_block(block, probs, threshold, running_max, total, weighted, above, dot_probs):
    """Fold one ``(rows, n)`` block of logits into the running reductions (online log-sum-exp).

    Returns the updated ``(running_max, Σ exp(z − m), Σ exp(z − m) z, #{z > threshold}, Σ p z)``;
    sums within a block are float32, across blocks float64. In-place work on one scratch block:
    a compiled (fused) version measured no faster end to end on CPU.
    """
    scratch = torch.empty_like(block)
    new_max = torch.maximum(running_max, block.amax(0))
    rescale = torch.exp(running_max - new_max).double()
    dot_probs = dot_probs + torch.mul(probs, block, out=scratch).sum(0)
    above = above + torch.gt(block, threshold, out=scratch).sum(0)
    torch.sub(block, new_max, out=scratch).clamp_(min=_EXP_FLOOR).exp_()
    total = total * rescale + scratch.sum(0)
    weighted = weighted * rescale + scratch.mul_(block).sum(0)
    return new_max, total, weighted, above, dot_probs
