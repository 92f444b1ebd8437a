"""Lenses: decode layer ``i``'s residual stream into next-token logits.

Layer convention: ``layer`` in ``0..L-1`` is ``hidden_states[i]`` (the input of block ``i``,
``0`` = embeddings); ``layer == L`` is the last block's output before the final norm, which every
lens decodes with the bare model head (the "output" row: equal to the model's logits).

A lens reading sub-layer points (``points="mid"`` or ``"both"``, see :mod:`tunedlens.arch.points`)
numbers its rows the same way over those points: ``n_blocks`` is ``L``, ``output_row`` the index
of its output row (``2L`` for ``both``), and ``row_label(lens.points, row, lens.n_blocks)`` names
each row (``"3.mid"``).
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
from torch import nn

from tunedlens.arch.points import Points, check_points, mid_modules, output_row
from tunedlens.errors import InputError, InputTypeError, LensMismatch, OutOfRange
from tunedlens.lenses.io.files import LensFile, LensFormat, write_lens
from tunedlens.lenses.translators import (
    TRANSLATOR_KINDS,
    AffineTranslator,
    DiagonalTranslator,
    LowRankTranslator,
    MLPTranslator,
    TranslatorKind,
)
from tunedlens.lenses.unembed import Unembed

KIND_TITLES = {"logit": "logit lens", "tuned": "tuned lens", "jacobian": "Jacobian lens"}
"""How each lens kind is called in tables and figure titles."""


def kind_title(kind: str) -> str:
    """``"jacobian"`` -> ``"Jacobian lens"``; an unknown kind ``k`` -> ``"k lens"``."""
    return KIND_TITLES.get(kind, f"{kind} lens")


class Lens(nn.Module):
    """Common interface: ``lens(hidden, layer) -> logits`` in float32."""

    unembed: Unembed
    kind: str = "lens"
    """What kind of lens this is (``logit``, ``tuned``, ...): the default name in readouts."""
    source: str = ""
    """Where the lens came from (its location string), for reports and the web explorer."""
    points: Points = "block"
    """Which points of each block its rows read (see :mod:`tunedlens.arch.points`)."""

    def __init__(self, unembed: Unembed, points: Points = "block"):
        super().__init__()
        self.unembed = unembed
        self.points = check_points(points)

    @property
    def n_blocks(self) -> int:
        """Number of decoder blocks ``L`` of the model."""
        return self.unembed.arch.n_blocks

    @property
    def output_row(self) -> int:
        """The index of the output row: ``L`` for block or mid points, ``2L`` for both.

        Rows ``0..output_row-1`` are the points the lens reads.
        """
        return output_row(self.points, self.n_blocks)

    @property
    def d_model(self) -> int:
        """Residual width of the model."""
        return self.unembed.d_model

    def check_row(self, row: int) -> int:
        """``row`` when it is one of the lens's rows ``0..output_row``; an IndexError saying which if not."""
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row <= self.output_row:
            what = "0 = embeddings" if self.points == "block" else f"rows of {self.points} points"
            raise OutOfRange(
                f"layer must be an int in 0..{self.output_row} ({what}, {self.output_row} = "
                f"output of the last block), got {row!r}"
            )
        return row

    def transform(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Map layer states into the final layer's basis (float32, before the final norm)."""
        self.check_row(layer)
        return hidden.to(self.unembed.device, torch.float32)

    def forward(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Decode ``(..., d_model)`` states of ``layer`` into float32 logits ``(..., vocab)``."""
        if not isinstance(hidden, torch.Tensor):
            raise InputTypeError(
                f"hidden states must be a torch.Tensor of shape (..., {self.d_model}), got a "
                f"{type(hidden).__name__}; convert it with torch.as_tensor(...)."
            )
        if hidden.dim() == 0:
            raise InputError(f"hidden states must have shape (..., {self.d_model}), got a scalar")
        self._check_width(hidden)
        return self.scale_logits(self.unembed(self.transform(hidden, layer)), layer)

    def scale_logits(self, logits: torch.Tensor, layer: int) -> torch.Tensor:
        """Multiply logits by the lens's scale for ``layer`` (see :meth:`log_logit_scale`)."""
        log_scale = self.log_logit_scale(layer)
        return logits if log_scale is None else logits * torch.exp(log_scale)

    def log_logit_scale(self, layer: int) -> torch.Tensor | None:
        """Log of a factor the lens applies to the head's logits (``None``: no factor)."""
        return None

    def _check_width(self, hidden: torch.Tensor) -> None:
        if hidden.shape[-1] != self.d_model:
            raise LensMismatch(
                f"hidden states have width {hidden.shape[-1]}, the model's residual stream is "
                f"{self.d_model} wide; pass residuals of the model this lens was built for."
            )


class LogitLens(Lens):
    """The logit lens: every layer decoded directly with the model's final norm and unembedding.

    Args:
        model: The causal LM.
        final_norm: Override the final norm (a module or dotted path into ``model``).
        skip_norm: Decode without the final norm.
        points: Read block inputs (``"block"``), the states after attention and before the MLP
            (``"mid"``) or both, interleaved (see :mod:`tunedlens.arch.points`).
    """

    kind = "logit"
    source = "logit"

    def __init__(
        self,
        model: nn.Module,
        *,
        final_norm: nn.Module | str | None = None,
        skip_norm: bool = False,
        points: Points = "block",
    ):
        unembed = Unembed(model, final_norm=final_norm, skip_norm=skip_norm)
        if points != "block":
            mid_modules(unembed.arch, model)  # NoMidPoint now, not at the first readout
        super().__init__(unembed, points)

    def at_points(self, points: Points, model: nn.Module) -> LogitLens:
        """This logit lens (same head and norm) reading ``points`` of ``model``'s blocks."""
        if points == self.points:
            return self
        if check_points(points) != "block":
            mid_modules(self.unembed.arch, model)
        lens = copy.copy(self)
        lens.points = points
        return lens


def model_info(model: nn.Module, unembed: Unembed, revision: str | None = None) -> dict:
    """What a lens file records about its model."""
    config = model.config
    return {
        "base_model_name_or_path": getattr(config, "name_or_path", "") or "",
        "base_model_revision": revision,
        "model_type": getattr(config, "model_type", None),
        "vocab_size": unembed.vocab_size,
        "unembed_hash": unembed.hash(),
    }


class TunedLens(Lens):
    """A tuned lens: a learned per-layer translator followed by the model's own head.

    Build an untrained one with :meth:`from_model` (it equals the logit lens exactly), load one
    with :func:`~tunedlens.lenses.io.load.load_lens`, and write it with :meth:`save`.
    """

    kind = "tuned"

    def __init__(
        self,
        unembed: Unembed,
        translator: AffineTranslator | LowRankTranslator | DiagonalTranslator | MLPTranslator,
        model_info: dict,
        provenance: dict | None = None,
        points: Points = "block",
    ):
        super().__init__(unembed, points)
        if translator.n_rows != self.output_row or translator.d_model != unembed.d_model:
            raise LensMismatch(
                f"translator has {translator.n_rows} rows of width {translator.d_model}; the "
                f"model has {self.output_row} {points} points of width {unembed.d_model}."
            )
        self.translator = translator.to(unembed.device)
        self.model_info = dict(model_info)
        self.provenance = dict(provenance or {})

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        translator: TranslatorKind = "affine",
        rank: int | None = None,
        use_temperature: bool = False,
        use_bias: bool = True,
        seed: int = 0,
        revision: str | None = None,
        final_norm: nn.Module | str | None = None,
        skip_norm: bool = False,
        points: Points = "block",
    ) -> TunedLens:
        """An untrained lens for ``model`` (identity translators: equal to the logit lens).

        Args:
            model: The causal LM.
            translator: ``"affine"`` (``h + W h + b``), ``"lowrank"`` (``h + (h U) Vᵀ + c``),
                ``"diagonal"`` (``h ⊙ (1 + s) + b``) or ``"mlp"`` (``h + W₂ gelu(W₁ h + c) + b``).
            rank: Low-rank rank, or the MLP's hidden width; default ``clip(d_model // 32, 64, 256)``.
            use_temperature: Low-rank only: learn a per-layer temperature.
            use_bias: Affine only: learn a bias.
            seed: Seeds the random ``U`` of low-rank translators.
            revision: Model revision to record in the lens file.
            final_norm: Override the final norm.
            skip_norm: Decode without the final norm.
            points: Train a translator per block input (``"block"``), per mid point (``"mid"``:
                after attention, before the MLP) or per both (see :mod:`tunedlens.arch.points`).
        """
        unembed = LogitLens(
            model, final_norm=final_norm, skip_norm=skip_norm, points=points
        ).unembed
        n_rows, d_model = output_row(points, unembed.arch.n_blocks), unembed.d_model
        if translator == "affine":
            if use_temperature:
                raise InputError("use_temperature needs translator='lowrank'")
            module = AffineTranslator(n_rows, d_model, use_bias=use_bias)
        elif translator == "lowrank":
            generator = torch.Generator().manual_seed(seed)
            module = LowRankTranslator(
                n_rows, d_model, rank=rank, use_temperature=use_temperature, generator=generator
            )
        elif translator in ("diagonal", "mlp"):
            if use_temperature or not use_bias:
                raise InputError(
                    f"use_temperature and use_bias=False do not apply to translator={translator!r}"
                )
            if translator == "diagonal":
                module = DiagonalTranslator(n_rows, d_model)
            else:
                generator = torch.Generator().manual_seed(seed)
                module = MLPTranslator(n_rows, d_model, hidden=rank, generator=generator)
        else:
            raise InputError(
                f"translator must be one of {', '.join(TRANSLATOR_KINDS)}, got {translator!r}"
            )
        return cls(unembed, module, model_info(model, unembed, revision), points=points)

    def transform(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """Apply translator ``layer`` (identity for ``layer == L``) in float32."""
        hidden = super().transform(hidden, layer)
        if layer == self.output_row:
            return hidden
        return self.translator(hidden, layer)

    def log_logit_scale(self, layer: int) -> torch.Tensor | None:
        """Minus the learned log-temperature of ``layer``, if the translator has one."""
        log_temperature = (
            None if layer == self.output_row else self.translator.log_temperature(layer)
        )
        return None if log_temperature is None else -log_temperature

    def to_file(self) -> LensFile:
        """The lens as a :class:`LensFile` (shares the translator's tensors)."""
        return LensFile(self.translator, self.model_info, self.provenance, points=self.points)

    def save(
        self,
        path: str | os.PathLike,
        format: LensFormat = "native",
        provenance: dict | None = None,
    ) -> None:
        """Write the lens to the directory ``path``.

        Args:
            path: Target directory (created if needed).
            format: ``"native"`` (safetensors) or ``"tuned-lens"`` (reference ``params.pt``).
            provenance: Extra entries for ``provenance.json`` (e.g. training settings).
        """
        from tunedlens.provenance import environment

        record = self.to_file()
        record.provenance = {
            **self.provenance,
            **(provenance or {}),
            **environment(),
            "model": self.model_info,
            "translator": {
                "kind": self.translator.kind,
                "n_rows": self.output_row,
                "points": self.points,
                "d_model": self.d_model,
                "rank": getattr(self.translator, "rank", None),
                "use_temperature": getattr(self.translator, "use_temperature", False),
            },
        }
        write_lens(record, path, format)


def check_fits(
    stored: LensFile,
    unembed: Unembed,
    model: nn.Module,
    *,
    strict: bool = True,
    where: str = "the lens",
) -> None:
    """Raise :class:`LensMismatch` unless the stored lens fits the model's width, depth and head."""
    info = stored.model_info
    trained_for = info.get("base_model_name_or_path") or "an unnamed model"
    name = getattr(model.config, "name_or_path", "") or type(model).__name__
    translator = stored.translator
    problems = []
    if translator.d_model != unembed.d_model:
        problems.append(f"d_model {translator.d_model} vs the model's {unembed.d_model}")
    expected_rows = output_row(stored.points, unembed.arch.n_blocks)
    if translator.n_rows != expected_rows:
        what = "layers" if stored.points == "block" else f"{stored.points} points"
        problems.append(f"{translator.n_rows} {what} vs the model's {expected_rows}")
    if info.get("vocab_size") not in (None, unembed.vocab_size):
        problems.append(f"vocabulary {info['vocab_size']} vs the model's {unembed.vocab_size}")
    if problems:
        raise LensMismatch(
            f"{where} was trained for {trained_for} and does not fit {name}: "
            f"{'; '.join(problems)}. Load the lens of this model, or load the model it was made for."
        )
    expected = info.get("unembed_hash")
    if expected and expected != unembed.hash():
        message = (
            f"{where} was trained for {trained_for}, whose unembedding differs from {name}'s "
            "(fingerprint mismatch): its predictions would be decoded with the wrong head."
        )
        if strict:
            raise LensMismatch(
                message + " If the model is a re-quantised or converted copy of the same weights, "
                "pass strict=False (CLI: --no-strict) to use the lens anyway."
            )
        warnings.warn(message, stacklevel=3)
