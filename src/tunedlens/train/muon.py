"""Muon for translators: every layer's matrix orthogonalised, all layers in one batched pass.

Translators keep their layers stacked (``weight`` is ``(L, d, d)``), while Muon updates 2-D
matrices. :class:`StackedMuon` is Muon (the algorithm of ``torch.optim.Muon``: momentum,
Nesterov, five quintic Newton–Schulz steps, decoupled weight decay) applied to each ``(m, n)``
slice of an ``(L, m, n)`` parameter, with the Newton–Schulz products batched over the layers and
computed in float32: ``torch.optim.Muon`` runs them in bfloat16, which is fast on accelerators
but about 30x slower than float32 on CPUs without bfloat16 units (a Muon step then took longer
than the whole forward and backward pass of a 16k-token step on SmolLM2). Its update size is
matched to AdamW's (``torch.optim.Muon``'s ``adjust_lr_fn="match_rms_adamw"``), so one ``lr``
serves both. Biases and other parameters stay with AdamW.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tunedlens.errors import InputError

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
"""The quintic Newton–Schulz coefficients of ``torch.optim.Muon`` (and of Keller Jordan's Muon)."""


def orthogonalize(update: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately ``U Vᵀ`` of each ``(m, n)`` matrix of ``(L, m, n)`` ``update``, in float32."""
    a, b, c = NS_COEFFICIENTS
    x = update.float()
    wide = x.shape[-2] > x.shape[-1]
    if wide:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp_min(eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.mT if wide else x).to(update.dtype)


class StackedMuon(torch.optim.Optimizer):
    """Muon on stacks of matrices: each ``(m, n)`` slice of an ``(L, m, n)`` parameter is one.

    Args:
        params: ``(L, m, n)`` parameters (a 2-D one is treated as ``L = 1``).
        lr: Learning rate, AdamW-equivalent (scaled by ``0.2 sqrt(max(m, n))`` internally).
        momentum: Momentum of the gradient average.
        weight_decay: Decoupled weight decay.
        nesterov: Use the Nesterov form of the momentum.
        ns_steps: Newton–Schulz iterations.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        ns_steps: int = 5,
    ):
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or ns_steps < 1:
            raise InputError(
                f"bad Muon settings: lr={lr}, momentum={momentum}, weight_decay={weight_decay}, "
                f"ns_steps={ns_steps}"
            )
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            ns_steps=ns_steps,
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.dim() not in (2, 3):
                    raise InputError(
                        f"StackedMuon takes (L, m, n) or (m, n) parameters, got {tuple(parameter.shape)}"
                    )

    @torch.no_grad()
    def step(self, closure=None):
        """One Muon step of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                grad = parameter.grad if parameter.dim() == 3 else parameter.grad.unsqueeze(0)
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalize(update, group["ns_steps"]).view_as(parameter)
                scale = 0.2 * math.sqrt(max(parameter.shape[-2], parameter.shape[-1]))
                parameter.mul_(1 - lr * group["weight_decay"])
                parameter.add_(update, alpha=-lr * scale)
        return loss


def muon_optimizers(
    parameters: list[nn.Parameter],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    betas: tuple[float, float],
) -> list[torch.optim.Optimizer]:
    """``[StackedMuon over the stacked layer matrices, AdamW over the rest]``."""
    matrices = [p for p in parameters if p.dim() == 3]
    others = [p for p in parameters if p.dim() != 3]
    optimizers: list[torch.optim.Optimizer] = [
        StackedMuon(matrices, lr=lr, momentum=momentum, weight_decay=weight_decay)
    ]
    if others:
        optimizers.append(torch.optim.AdamW(others, lr=lr, betas=betas, weight_decay=weight_decay))
    return optimizers


__all__ = ["NS_COEFFICIENTS", "StackedMuon", "muon_optimizers", "orthogonalize"]
