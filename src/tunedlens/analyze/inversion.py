"""Unembedding inversion: a residual state whose decoded distribution matches given logits."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunedlens.errors import InputError
from tunedlens.lenses.unembed import Unembed
from tunedlens.metrics.divergence import kl_divergence


@dataclass(frozen=True)
class Inversion:
    """The result of :func:`invert_unembed`."""

    hidden: torch.Tensor
    """``(..., d_model)`` pre-norm state (what the residual stream would hold)."""
    normalized: torch.Tensor
    """``(..., d_model)`` the same state after the final norm."""
    kl: torch.Tensor
    """``(...)`` KL(target ‖ decoded) in nats at the end."""
    initial_kl: torch.Tensor
    """``(...)`` the same for the least-squares initialisation."""
    iterations: int
    converged: bool


def _least_squares_start(unembed: Unembed, target: torch.Tensor) -> torch.Tensor:
    """Pre-norm states whose centred logits best match the target's, by least squares."""
    weight = unembed.unembedding.weight.detach().float()
    for module in reversed(unembed.pre_unembed):
        weight = weight @ module.weight.detach().float()
    logits = target.float()
    if unembed.arch.logit_softcap is not None:
        cap = unembed.arch.logit_softcap
        logits = torch.atanh((logits / cap).clamp(-0.999, 0.999)) * cap
    if unembed.arch.logit_multiplier is not None:
        logits = logits / unembed.arch.logit_multiplier
    # Softmax ignores a shift: match centred logits with a centred matrix.
    centred_weight = weight - weight.mean(0, keepdim=True)
    centred = (logits - logits.mean(-1, keepdim=True)).reshape(-1, logits.shape[-1])
    solution = torch.linalg.lstsq(centred_weight, centred.T).solution.T
    if unembed.final_norm is not None:
        gain, shift = _norm_affine(unembed)
        safe = torch.where(gain.abs() > 1e-3, gain, torch.ones_like(gain))
        solution = (solution - shift) / safe
    return solution.reshape(*target.shape[:-1], -1)


@torch.no_grad()
def _norm_affine(unembed: Unembed) -> tuple[torch.Tensor, torch.Tensor]:
    """The final norm's per-dimension gain and shift on zero-mean, unit-RMS inputs.

    Probed rather than read from parameters: norms store their gain differently (Gemma's is
    ``1 + weight``). ``±1`` alternating inputs have mean 0 and RMS 1, so ``norm(x) = g x + b``.
    """
    d_model = unembed.d_model
    probe = torch.ones(d_model, device=unembed.device)
    probe[1::2] = -1.0
    plus, minus = unembed.normalize(probe), unembed.normalize(-probe)
    return (plus - minus) / (2 * probe), (plus + minus) / 2


def invert_unembed(
    unembed: Unembed,
    target_logits: torch.Tensor,
    *,
    prior_mean: torch.Tensor | None = None,
    prior_weight: float = 0.0,
    max_iter: int = 500,
    tolerance: float = 1e-7,
) -> Inversion:
    """Find pre-norm states ``h`` with ``softmax(unembed(h)) ≈ softmax(target_logits)``.

    Minimises KL(target ‖ decoded) (+ ``prior_weight · mean((h − prior_mean)²)``) with L-BFGS,
    starting from a least-squares fit of the centred logits.

    Args:
        unembed: The model's head (``lens.unembed``).
        target_logits: ``(..., vocab)`` logits to reproduce.
        prior_mean: ``(d_model,)`` or ``(..., d_model)`` state the prior pulls towards.
        prior_weight: Strength of the prior (0: none).
        max_iter: L-BFGS iterations at most.
        tolerance: Stop when the loss changes less than this between iterations.

    Returns:
        An :class:`Inversion` with the pre- and post-norm states and convergence information.
    """
    if target_logits.shape[-1] != unembed.vocab_size:
        raise InputError(
            f"target logits have {target_logits.shape[-1]} entries, the vocabulary has "
            f"{unembed.vocab_size}"
        )
    target = target_logits.detach().float().to(unembed.device).log_softmax(-1)
    start = _least_squares_start(unembed, target_logits.to(unembed.device))
    hidden = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [hidden],
        max_iter=max_iter,
        tolerance_change=tolerance,
        tolerance_grad=1e-10,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        kl = kl_divergence(target, unembed(hidden).log_softmax(-1))
        loss = kl.sum()
        if prior_weight and prior_mean is not None:
            loss = loss + prior_weight * (hidden - prior_mean.to(hidden)).square().mean(-1).sum()
        return loss

    def closure():
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.no_grad():
        initial = kl_divergence(target, unembed(start).log_softmax(-1))
    optimizer.step(closure)
    state = optimizer.state[optimizer._params[0]]
    iterations = int(state.get("n_iter", 0))
    hidden = hidden.detach()
    with torch.no_grad():
        final = kl_divergence(target, unembed(hidden).log_softmax(-1))
    return Inversion(
        hidden=hidden,
        normalized=unembed.normalize(hidden),
        kl=final,
        initial_kl=initial,
        iterations=iterations,
        converged=iterations < max_iter,
    )
