"""Muon for translators: ``torch.optim.Muon`` on each layer's matrix of a stacked parameter.

Translators keep their layers stacked (``weight`` is ``(L, d, d)``) while Muon orthogonalises 2-D
updates. Each layer's matrix is handed to ``torch.optim.Muon`` as its own parameter, a view that
shares the stacked tensor's storage: Muon's in-place update writes straight into the translator,
and the stacked gradient (clipped, averaged across processes) is handed to the views before each
step. Biases and other non-matrix parameters stay with AdamW.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerViews:
    """Per-layer 2-D views of stacked ``(L, m, n)`` parameters, as leaf parameters."""

    def __init__(self, stacked: list[nn.Parameter]):
        self.stacked = stacked
        self.views = [[nn.Parameter(parameter.data[i]) for i in range(parameter.shape[0])]
                      for parameter in stacked]  # fmt: skip
        for parameter, views in zip(stacked, self.views, strict=True):
            for view in views:
                if view.data_ptr() == 0 or view.untyped_storage().data_ptr() != parameter.untyped_storage().data_ptr():
                    raise RuntimeError("a layer view does not share its translator's storage")

    def parameters(self) -> list[nn.Parameter]:
        """Every view, layer by layer."""
        return [view for views in self.views for view in views]

    def pass_gradients(self) -> None:
        """Give each view its layer of the stacked gradient (``None`` where there is none)."""
        for parameter, views in zip(self.stacked, self.views, strict=True):
            for i, view in enumerate(views):
                view.grad = None if parameter.grad is None else parameter.grad[i]


def muon_optimizers(parameters: list[nn.Parameter], *, lr: float, momentum: float, weight_decay: float,
                    betas: tuple[float, float]) -> tuple[list[torch.optim.Optimizer], LayerViews]:  # fmt: skip
    """``[Muon over the layer matrices, AdamW over the rest]`` and the views to pass gradients to.

    Muon's learning rate is scaled to match AdamW's update size (``adjust_lr_fn="match_rms_adamw"``),
    so one ``lr`` serves both.
    """
    matrices = [p for p in parameters if p.dim() == 3]
    others = [p for p in parameters if p.dim() != 3]
    views = LayerViews(matrices)
    muon = torch.optim.Muon(views.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay,
                            adjust_lr_fn="match_rms_adamw")  # fmt: skip
    optimizers: list[torch.optim.Optimizer] = [muon]
    if others:
        optimizers.append(torch.optim.AdamW(others, lr=lr, betas=betas, weight_decay=weight_decay))
    return optimizers, views


__all__ = ["LayerViews", "muon_optimizers"]
