"""The model's own decoding head (final norm, unembedding, post-head transforms) in float32."""

from __future__ import annotations

import copy
import hashlib
import warnings
import weakref

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tunedlens.arch.residuals import collect_residuals
from tunedlens.arch.resolve import ResolvedArch, describe_structure, get_path, resolve_arch
from tunedlens.errors import ArchitectureNotFound, InputTypeError

# Rows of a low-precision unembedding cast to float32 at a time: bounds the transient copy
# (16k x 4096 floats = 256 MiB at most) instead of materialising the whole matrix in float32.
_VOCAB_CHUNK = 16384


def _float32_module(module: nn.Module) -> nn.Module:
    """The module itself if it is float32, else a float32 copy (norms are O(d_model) parameters)."""
    params = list(module.parameters()) + list(module.buffers())
    if all(p.dtype == torch.float32 for p in params if p.is_floating_point()):
        return module
    return copy.deepcopy(module).float()


def _linear_float32(hidden: torch.Tensor, linear: nn.Module) -> torch.Tensor:
    """``linear(hidden)`` computed in float32 without a persistent float32 copy of the weight."""
    weight = linear.weight
    bias = getattr(linear, "bias", None)
    if weight.dtype == torch.float32:
        return F.linear(hidden, weight, bias)
    chunks = []
    for start in range(0, weight.shape[0], _VOCAB_CHUNK):
        stop = start + _VOCAB_CHUNK
        chunk_bias = None if bias is None else bias[start:stop].float()
        chunks.append(F.linear(hidden, weight[start:stop].float(), chunk_bias))
    return torch.cat(chunks, dim=-1)


def unembed_hash(weight: torch.Tensor) -> str:
    """The reference ``tuned-lens`` fingerprint of an unembedding matrix.

    sha256 of numpy's summarised printout at one decimal, so it survives dtype changes and small
    perturbations; lens files of both formats store it to catch lens/model mix-ups.
    """
    array = weight.detach().to("cpu", torch.float32).numpy()
    with np.printoptions(precision=1, threshold=1000, edgeitems=3, linewidth=75, legacy=False):
        text = np.array_str(array, precision=1)
    return hashlib.sha256(text.encode()).hexdigest()


class Unembed:
    """Decode residual-stream states with the model's own head, in float32.

    The head is shared with the model, not copied: the unembedding matrix stays the model's
    tensor (low-precision weights are cast to float32 in row chunks per call). Only a norm held in
    low precision is copied to float32, which costs ``O(d_model)``.

    Args:
        model: The causal LM.
        arch: Resolved modules; resolved from ``model`` when omitted.
        final_norm: Override the final norm: a module or a dotted path into ``model``.
        skip_norm: Decode without any final norm (the raw logit lens).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        arch: ResolvedArch | None = None,
        final_norm: nn.Module | str | None = None,
        skip_norm: bool = False,
    ):
        if not isinstance(model, nn.Module):
            raise InputTypeError(
                f"model must be the Hugging Face model the lens decodes for, got {type(model).__name__}"
            )
        arch = arch or resolve_arch(model)
        if arch.source == "guess":
            _accept_guess(model, arch)
        self._build(model, arch, final_norm, skip_norm)

    @classmethod
    def from_arch(cls, arch: ResolvedArch) -> Unembed:
        """The model's own head (its final norm, no override) from already resolved modules."""
        head = cls.__new__(cls)
        head._build(None, arch, None, False)
        return head

    def _build(self, model, arch: ResolvedArch, final_norm, skip_norm: bool) -> None:
        self.arch = arch
        if isinstance(final_norm, str):
            final_norm = get_path(model, final_norm)
        norm = final_norm if final_norm is not None else self.arch.final_norm
        self.skip_norm = skip_norm
        self.final_norm = None if skip_norm or norm is None else _float32_module(norm)
        self.pre_unembed = self.arch.pre_unembed
        self.unembedding = self.arch.unembed
        self._hash: str | None = None

    @property
    def d_model(self) -> int:
        """Width of the residual stream the head accepts."""
        if self.pre_unembed:
            return self.pre_unembed[0].weight.shape[1]
        return self.unembedding.weight.shape[1]

    @property
    def vocab_size(self) -> int:
        """Number of logits the head produces."""
        return self.unembedding.weight.shape[0]

    @property
    def device(self) -> torch.device:
        """Device of the unembedding matrix."""
        return self.unembedding.weight.device

    def normalize(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the final norm (unless skipped) in float32: ``(..., d) -> (..., d)``."""
        hidden = hidden.to(self.device, torch.float32)
        return hidden if self.final_norm is None else self.final_norm(hidden).float()

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the unembedding matrix multiplies: the final norm, then any projection."""
        hidden = self.normalize(hidden)
        for module in self.pre_unembed:
            hidden = _linear_float32(hidden, module)
        return hidden

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """Decode ``(..., d_model)`` states into float32 logits ``(..., vocab)``."""
        return self.post_head(_linear_float32(self.head_input(hidden), self.unembedding))

    def post_head(self, logits: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """The model's transforms after the unembedding: logit scale, then soft-cap.

        ``inplace`` overwrites ``logits`` (no autograd; evaluation's vocabulary blocks).
        """
        multiplier, cap = self.arch.logit_multiplier, self.arch.logit_softcap
        if inplace:
            if multiplier is not None:
                logits.mul_(multiplier)
            return logits if cap is None else logits.div_(cap).tanh_().mul_(cap)
        if multiplier is not None:
            logits = logits * multiplier
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def hash(self) -> str:
        """Reference-compatible fingerprint of the unembedding (cached)."""
        if self._hash is None:
            self._hash = unembed_hash(self.unembedding.weight)
        return self._hash


_VERIFIED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _accept_guess(model: nn.Module, arch: ResolvedArch) -> None:
    """Verify a structurally guessed architecture once per model, or raise with what was found."""
    if _VERIFIED.get(model) == arch.spec:
        return
    problem = verify_head(model, arch)
    model_type = getattr(model.config, "model_type", None)
    if problem is not None:
        raise ArchitectureNotFound(
            f"model_type={model_type!r} is not registered.\n  The structural guess {arch.spec} "
            f"was rejected: {problem}\n{describe_structure(model)}"
        )
    warnings.warn(
        f"model_type={model_type!r} is not registered; using the structural guess {arch.spec}, "
        "which reproduced the model's logits on a test batch. Register it with "
        f"tunedlens.register_arch({model_type!r}, {arch.spec}) to silence this warning.",
        stacklevel=4,
    )
    _VERIFIED[model] = arch.spec


def verify_head(model: nn.Module, arch: ResolvedArch) -> str | None:
    """Check on one small batch that decoding the last block's output reproduces the logits.

    Returns:
        ``None`` when it does, else a sentence saying what differed.
    """
    vocab = arch.unembed.weight.shape[0]
    device = arch.unembed.weight.device
    input_ids = (torch.arange(8, device=device).unsqueeze(0) * 7 + 3) % vocab
    try:
        residuals = collect_residuals(model, input_ids, arch=arch)
        decoded = Unembed.from_arch(arch)(residuals.hidden[-1])
    except Exception as error:  # a wrong guess can fail in many ways; report, don't crash
        return f"running it failed with {type(error).__name__}: {error}"
    expected = residuals.logits.float()
    if decoded.shape != expected.shape:
        return (
            f"decoded logits have shape {tuple(decoded.shape)}, the model's {tuple(expected.shape)}"
        )
    error = (decoded - expected).abs().max().item()
    scale = expected.abs().max().item() + 1e-6
    if error > 1e-3 * scale + 1e-4:
        return f"decoded logits differ from the model's by up to {error:.3g}"
    return None
