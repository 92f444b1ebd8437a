"""Per-layer translators: maps from layer ``i``'s residual stream into the final layer's basis.

Parameters of all layers are stacked in single tensors (one ``(L, d, d)`` weight rather than
``L`` Linear modules) so that training can update every layer in one batched kernel. Translators
are always float32, whatever the model's dtype, and start as the exact identity.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from tunedlens.errors import InputError

TranslatorKind = Literal["affine", "lowrank", "diagonal", "mlp"]
TRANSLATOR_KINDS: tuple[str, ...] = ("affine", "lowrank", "diagonal", "mlp")


def default_rank(d_model: int) -> int:
    """Seed-plan rank of the low-rank translator: ``clip(d_model // 32, 64, 256)``.

    Never more than ``d_model`` (only tiny test models are narrower than 64).
    """
    return int(min(max(d_model // 32, 64), 256, d_model))


class AffineTranslator(nn.Module):
    """``h + h Wᵢᵀ + bᵢ`` with ``W`` and ``b`` zero-initialised (the paper's and reference's lens).

    Args:
        n_rows: Number of translators, one per row below the output row (``L``, ``2L`` for both).
        d_model: Residual width ``d``.
        use_bias: Learn the bias ``b``.
    """

    kind: TranslatorKind = "affine"

    def __init__(self, n_rows: int, d_model: int, *, use_bias: bool = True):
        super().__init__()
        self.n_rows, self.d_model = n_rows, d_model
        self.weight = nn.Parameter(torch.zeros(n_rows, d_model, d_model))
        self.bias = nn.Parameter(torch.zeros(n_rows, d_model)) if use_bias else None

    @property
    def use_bias(self) -> bool:
        """Whether the translator has a bias."""
        return self.bias is not None

    def forward(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Translate ``(..., d)`` float32 states of ``layer``."""
        out = hidden + hidden @ self.weight[layer].T
        return out if self.bias is None else out + self.bias[layer]

    def log_temperature(self, layer: int) -> torch.Tensor | None:
        """Affine translators have no temperature."""
        return None

    def update_norm(self, layer: int) -> float:
        """Frobenius norm of the learned linear update of ``layer``."""
        return float(self.weight[layer].detach().norm())


class LowRankTranslator(nn.Module):
    """``h + (h Uᵢ) Vᵢᵀ + cᵢ`` with an optional learned per-layer temperature.

    ``U`` starts random (scaled by ``1/sqrt(d)``), ``V``, ``c`` and the log-temperature start at
    zero, so the untrained translator is exactly the identity yet ``V`` gets a gradient at once.

    Args:
        n_rows: Number of translators, one per row below the output row (``L``, ``2L`` for both).
        d_model: Residual width ``d``.
        rank: Rank ``r``; defaults to :func:`default_rank`.
        use_temperature: Learn a per-layer temperature ``T`` (logits are divided by it).
        generator: Random generator for ``U`` (seeded runs are reproducible).
    """

    kind: TranslatorKind = "lowrank"

    def __init__(
        self,
        n_rows: int,
        d_model: int,
        *,
        rank: int | None = None,
        use_temperature: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        rank = default_rank(d_model) if rank is None else rank
        if not 0 < rank <= d_model:
            raise InputError(f"rank must be in 1..{d_model} (d_model), got {rank}")
        self.n_rows, self.d_model, self.rank = n_rows, d_model, rank
        u = torch.randn(n_rows, d_model, rank, generator=generator) / math.sqrt(d_model)
        self.U = nn.Parameter(u)
        self.V = nn.Parameter(torch.zeros(n_rows, d_model, rank))
        self.bias = nn.Parameter(torch.zeros(n_rows, d_model))
        self.log_temp = nn.Parameter(torch.zeros(n_rows)) if use_temperature else None

    @property
    def use_temperature(self) -> bool:
        """Whether a per-layer temperature is learned."""
        return self.log_temp is not None

    def forward(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Translate ``(..., d)`` float32 states of ``layer``."""
        return hidden + (hidden @ self.U[layer]) @ self.V[layer].T + self.bias[layer]

    def log_temperature(self, layer: int) -> torch.Tensor | None:
        """``log T`` of ``layer``, or ``None`` without temperatures."""
        return None if self.log_temp is None else self.log_temp[layer]

    def update_norm(self, layer: int) -> float:
        """Frobenius norm of the learned linear update ``V Uᵀ`` of ``layer``."""
        return float((self.V[layer] @ self.U[layer].T).detach().norm())

    def to_affine(self) -> AffineTranslator:
        """The same map as an :class:`AffineTranslator` (``W = V Uᵀ``).

        Raises:
            ValueError: if the translator has temperatures, which affine lenses cannot express.
        """
        if self.use_temperature:
            raise InputError(
                "this low-rank lens learned per-layer temperatures, which the affine/tuned-lens "
                "format cannot represent; converting would change its predictions. Keep it in "
                "the native format."
            )
        affine = AffineTranslator(self.n_rows, self.d_model, use_bias=True)
        with torch.no_grad():
            affine.weight.copy_(self.V @ self.U.transpose(1, 2))
            affine.bias.copy_(self.bias)
        return affine


class DiagonalTranslator(nn.Module):
    """``h ⊙ (1 + sᵢ) + bᵢ``: a per-dimension scale and a bias, both zero-initialised.

    ``L · 2d`` parameters; exactly an affine translator with a diagonal ``W`` (so it converts to
    the reference format without loss).

    Args:
        n_rows: Number of translators, one per row below the output row (``L``, ``2L`` for both).
        d_model: Residual width ``d``.
    """

    kind: TranslatorKind = "diagonal"
    use_bias = True

    def __init__(self, n_rows: int, d_model: int):
        super().__init__()
        self.n_rows, self.d_model = n_rows, d_model
        self.scale = nn.Parameter(torch.zeros(n_rows, d_model))
        self.bias = nn.Parameter(torch.zeros(n_rows, d_model))

    def forward(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Translate ``(..., d)`` float32 states of ``layer``."""
        return hidden + hidden * self.scale[layer] + self.bias[layer]

    def log_temperature(self, layer: int) -> torch.Tensor | None:
        """Diagonal translators have no temperature."""
        return None

    def update_norm(self, layer: int) -> float:
        """Frobenius norm of the learned linear update ``diag(s)`` of ``layer``."""
        return float(self.scale[layer].detach().norm())

    def to_affine(self) -> AffineTranslator:
        """The same map as an :class:`AffineTranslator` (``W = diag(s)``)."""
        affine = AffineTranslator(self.n_rows, self.d_model, use_bias=True)
        with torch.no_grad():
            affine.weight.copy_(torch.diag_embed(self.scale))
            affine.bias.copy_(self.bias)
        return affine


class MLPTranslator(nn.Module):
    """``h + W₂ᵢ gelu(W₁ᵢ h + cᵢ) + bᵢ``: one hidden layer, residual, zero-initialised output.

    ``W₁`` starts random (scaled by ``1/sqrt(d)``), ``W₂`` and the biases at zero, so the
    untrained translator is exactly the identity yet ``W₂`` gets a gradient at once. Not affine:
    the reference format cannot hold it.

    Args:
        n_rows: Number of translators, one per row below the output row (``L``, ``2L`` for both).
        d_model: Residual width ``d``.
        hidden: Hidden width; defaults to :func:`default_rank`.
        generator: Random generator for ``W₁`` (seeded runs are reproducible).
    """

    kind: TranslatorKind = "mlp"
    use_bias = True

    def __init__(
        self,
        n_rows: int,
        d_model: int,
        *,
        hidden: int | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        hidden = default_rank(d_model) if hidden is None else hidden
        if hidden < 1:
            raise InputError(f"the MLP's hidden width must be at least 1, got {hidden}")
        self.n_rows, self.d_model, self.hidden = n_rows, d_model, hidden
        w_in = torch.randn(n_rows, hidden, d_model, generator=generator) / math.sqrt(d_model)
        self.w_in = nn.Parameter(w_in)
        self.b_in = nn.Parameter(torch.zeros(n_rows, hidden))
        self.w_out = nn.Parameter(torch.zeros(n_rows, d_model, hidden))
        self.bias = nn.Parameter(torch.zeros(n_rows, d_model))

    @property
    def rank(self) -> int:
        """The hidden width (stored as ``rank`` in lens files, like the low-rank rank)."""
        return self.hidden

    def forward(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Translate ``(..., d)`` float32 states of ``layer``."""
        inner = nn.functional.gelu(hidden @ self.w_in[layer].T + self.b_in[layer])
        return hidden + inner @ self.w_out[layer].T + self.bias[layer]

    def log_temperature(self, layer: int) -> torch.Tensor | None:
        """MLP translators have no temperature."""
        return None

    def update_norm(self, layer: int) -> float:
        """Frobenius norm of the output weight ``W₂`` of ``layer`` (zero when untrained)."""
        return float(self.w_out[layer].detach().norm())
