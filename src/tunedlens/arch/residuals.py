"""Read the residual stream of a model with forward hooks on its decoder blocks.

Layer convention (the same as the reference ``tuned-lens``): residual ``i`` for ``i < L`` is the
input of block ``i`` (``0`` = embeddings), equal to ``hidden_states[i]`` of Hugging Face models.
Residual ``L`` is the output of the last block *before* the final norm; decoding it with the
model's own head gives the model's logits (the "output" row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tunedlens.arch.resolve import ResolvedArch, resolve_arch


@dataclass(frozen=True)
class Residuals:
    """The residual stream of one forward pass."""

    hidden: tuple[torch.Tensor, ...]
    """``L + 1`` tensors of shape ``(batch, seq, d_model)`` in the model's dtype."""
    logits: torch.Tensor
    """The model's logits, ``(batch, seq, vocab)``."""

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks ``L``."""
        return len(self.hidden) - 1


def _block_input(args, kwargs) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs["hidden_states"]


def _block_output(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def collect_residuals(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    arch: ResolvedArch | None = None,
) -> Residuals:
    """Run ``model`` once and return every residual-stream state plus its logits.

    Args:
        model: A causal LM.
        input_ids: Token ids, ``(batch, seq)``.
        attention_mask: Optional mask, ``(batch, seq)``.
        arch: Resolved modules; resolved from the model when omitted.

    Returns:
        The residuals (``L + 1`` states) and logits. Gradients are not tracked.
    """
    arch = arch or resolve_arch(model)
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    captured: list[torch.Tensor | None] = [None] * (arch.n_layers + 1)
    handles = []

    def save_input(index):
        def hook(_module, args, kwargs):
            captured[index] = _block_input(args, kwargs)

        return hook

    def save_output(_module, _args, output):
        captured[-1] = _block_output(output)

    try:
        for index, block in enumerate(arch.layers):
            handles.append(block.register_forward_pre_hook(save_input(index), with_kwargs=True))
        handles.append(arch.layers[-1].register_forward_hook(save_output))
        with torch.no_grad():
            output = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i, h in enumerate(captured) if h is None]
    if missing:
        raise RuntimeError(
            f"decoder blocks {missing} did not run during the forward pass; the model skips "
            "layers, which tunedlens cannot lens."
        )
    return Residuals(hidden=tuple(captured), logits=output.logits)
