"""Finiteness checks shared by every reader of tensors (lens files, checkpoints, activations)."""

from __future__ import annotations

import torch


def first_nonfinite(tensor: torch.Tensor) -> int | None:
    """Index along the first dimension (the layer) of the first NaN/Inf entry, or None."""
    if not tensor.is_floating_point():
        return None
    if tensor.dim() == 0:
        return None if bool(torch.isfinite(tensor)) else 0
    bad = ~torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(-1)
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None
