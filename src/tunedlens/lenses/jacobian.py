"""The Jacobian lens (Gurnee et al. 2026): per layer, an averaged Jacobian into the final basis.

Row ``r``'s matrix is the corpus-averaged Jacobian of the final residual with respect to that
row's state, applied before the model's own final norm and head.

Layer convention. The published artifacts (and TransformerLens) index J-lens matrices by block
output: J-lens ``ℓ`` maps the output of block ``ℓ`` (HF ``hidden_states[ℓ + 1]``), so it is our
row ``ℓ + 1``. The last block's output is the output row (the identity). Our row 0 (the
embeddings) has a matrix only when we fitted it ourselves. Rows without a matrix decode as the
logit lens; :attr:`JacobianLens.rows` says which rows have one.

Matrices are kept in the dtype they were stored in (fp16 for published artifacts: a 70B lens
is ~21 GB in float32) and converted to float32 one layer at a time when used.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from tunedlens.arch.residuals import token_ids
from tunedlens.errors import InputError, LensMismatch
from tunedlens.lenses.io.jlens_files import (
    StoredJLens,
    read_stored_jlens,
    write_artifact,
    write_native,
)
from tunedlens.lenses.lens import Lens
from tunedlens.lenses.unembed import Unembed

__all__ = ["JacobianLens", "bind_jlens", "read_jlens"]


class JacobianLens(Lens):
    """A Jacobian lens: ``lens(h, row) = head(J_row h)``; the identity where no matrix exists.

    Args:
        unembed: The model's head.
        matrices: Our row -> ``(d_model, d_model)`` matrix (any float dtype; kept as given).
        n_prompts: Prompts averaged into the fit.
        metadata: Provenance (model, corpus, fit settings).
    """

    kind = "jacobian"

    def __init__(
        self,
        unembed: Unembed,
        matrices: dict[int, torch.Tensor],
        *,
        n_prompts: int = 0,
        metadata: dict | None = None,
    ):
        super().__init__(unembed)
        n_blocks, d_model = unembed.arch.n_blocks, unembed.d_model
        for row, matrix in matrices.items():
            if not 0 <= row < n_blocks:
                raise LensMismatch(
                    f"the J-lens has a matrix for row {row}, outside this model's rows 0..{n_blocks - 1}"
                )
            if tuple(matrix.shape) != (d_model, d_model):
                raise LensMismatch(
                    f"the J-lens matrices are {tuple(matrix.shape)}, the model's residual stream is "
                    f"{d_model} wide; load the J-lens of this model."
                )
        self.matrices = {int(row): matrix.detach() for row, matrix in sorted(matrices.items())}
        self.n_prompts = int(n_prompts)
        self.metadata = dict(metadata or {})
        self._cache: tuple[int, torch.device, torch.Tensor] | None = None

    @property
    def rows(self) -> list[int]:
        """Rows with a fitted matrix (the others decode as the logit lens)."""
        return list(self.matrices)

    def matrix(self, row: int) -> torch.Tensor | None:
        """Row ``row``'s matrix in float32 on the head's device (one layer cached), or None."""
        if row not in self.matrices:
            return None
        device = self.unembed.device
        if self._cache is None or self._cache[:2] != (row, device):
            self._cache = (row, device, self.matrices[row].to(device, torch.float32))
        return self._cache[2]

    def transform(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """``J_layer h`` in float32 (identity where the lens has no matrix)."""
        hidden = super().transform(hidden, layer)
        matrix = self.matrix(layer)
        return hidden if matrix is None else hidden @ matrix.T

    def token_directions(self, row: int, tokens) -> torch.Tensor:
        """Residual directions ``J_rowᵀ (g ⊙ u_v)`` of tokens ``v`` at ``row``: ``(m, d_model)``.

        ``u_v`` is row ``v`` of the unembedding and ``g`` the final norm's gain (folded in), so
        ``⟨direction, h⟩ / rms(J h)`` is the readout logit of ``v`` (before any soft-cap) for
        RMSNorm models — the building block of the paper's steering experiments.
        """
        self.check_row(row)
        ids = token_ids(tokens, "tokens").to(self.unembed.device).reshape(-1)
        vectors = self.unembed.unembedding.weight[ids].float()
        norm = self.unembed.final_norm
        gain = getattr(norm, "weight", None) if norm is not None else None
        if gain is not None:
            offset = 1.0 if "gemma" in type(norm).__name__.lower() else 0.0
            vectors = vectors * (gain.float() + offset)
        matrix = self.matrix(row)
        return vectors if matrix is None else vectors @ matrix

    def save(self, path: str | os.PathLike, format: str = "native") -> Path:
        """Write ``native`` (directory: safetensors + config) or ``artifact`` (a ``.pt`` file)."""
        path = Path(path)
        if format == "artifact":
            write_artifact(self, path)
        elif format == "native":
            write_native(self, path)
        else:
            raise InputError(f"format must be 'native' or 'artifact', got {format!r}")
        return path


def read_jlens(path: Path, model: nn.Module, *, strict: bool = True) -> JacobianLens:
    """A J-lens for ``model`` from a local artifact, checkpoint or native directory.

    The loader of the J-lens formats (:data:`tunedlens.lenses.io.formats.LOADERS`); load a
    lens from any location with :func:`~tunedlens.lenses.io.load.load_lens`.

    Width and depth must fit; a recorded unembedding fingerprint that differs is refused
    (``strict``) or warned about.
    """
    return bind_jlens(read_stored_jlens(path), model, strict=strict)


def bind_jlens(stored: StoredJLens, model: nn.Module, *, strict: bool = True) -> JacobianLens:
    """The J-lens ``stored`` (read without a model) for ``model``, checked as :func:`read_jlens`."""
    unembed = Unembed(model)
    info, path = stored.model_info, stored.path
    expected = info.get("unembed_hash")
    if expected and expected != unembed.hash():
        message = (
            f"{path} was fitted for {info.get('base_model_name_or_path') or 'another model'}, "
            "whose unembedding differs from this model's (fingerprint mismatch)."
        )
        if strict:
            raise LensMismatch(message + " Pass strict=False (CLI: --no-strict) to use it anyway.")
        import warnings

        warnings.warn(message, stacklevel=3)
    if info.get("vocab_size") not in (None, unembed.vocab_size):
        raise LensMismatch(
            f"{path} was fitted for a vocabulary of {info['vocab_size']}, not {unembed.vocab_size}."
        )
    if info.get("num_hidden_layers") not in (None, unembed.arch.n_blocks):
        raise LensMismatch(
            f"{path} was fitted for {info['num_hidden_layers']} blocks, not {unembed.arch.n_blocks}."
        )
    metadata = stored.metadata
    return JacobianLens(unembed, stored.matrices, n_prompts=stored.n_prompts, metadata=metadata)
