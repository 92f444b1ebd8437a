"""Read the residual stream of a model with forward hooks on its decoder blocks.

Layer convention (the same as the reference ``tuned-lens``): residual ``i`` for ``i < L`` is the
input of block ``i`` (``0`` = embeddings), equal to ``hidden_states[i]`` of Hugging Face models.
Residual ``L`` is the output of the last block *before* the final norm; decoding it with the
model's own head gives the model's logits (the "output" row). With ``points="mid"`` or ``"both"``
the states are those of :mod:`tunedlens.arch.points` (the mid point of block ``i`` is the input of
the module that starts its MLP half, e.g. Llama's ``post_attention_layernorm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tunedlens.arch.points import (
    Points,
    blocks_of,
    check_points,
    mid_modules,
    output_row,
    row_label,
)
from tunedlens.arch.resolve import ResolvedArch, resolve_arch
from tunedlens.errors import InputError, InputTypeError


@dataclass(frozen=True)
class Residuals:
    """The residual stream of one forward pass."""

    hidden: tuple[torch.Tensor, ...]
    """One tensor ``(batch, seq, d_model)`` per row ``0..output_row`` (``L + 1`` for block
    points), in the model's dtype; the last is the output row."""
    logits: torch.Tensor | None
    """The model's logits, ``(batch, seq, vocab)``; ``None`` when not computed."""
    points: Points = "block"
    """Which points of each block the rows hold (see :mod:`tunedlens.arch.points`)."""

    @property
    def output_row(self) -> int:
        """The index of the output row: ``L`` for block or mid points, ``2L`` for both."""
        return len(self.hidden) - 1

    @property
    def n_blocks(self) -> int:
        """Number of decoder blocks ``L`` of the model."""
        return blocks_of(self.points, self.output_row)


def block_input(args, kwargs) -> torch.Tensor:
    """The hidden states a decoder block was called with (positional or keyword)."""
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return kwargs["hidden_states"]


def block_output(output) -> torch.Tensor:
    """The hidden states a decoder block returned (a tensor, or the first of a tuple)."""
    return output if isinstance(output, torch.Tensor) else output[0]


class _StopForward(Exception):
    """Raised by the last block's hook to skip the final norm and unembedding."""


def _select(hidden: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    if positions is None:
        return hidden
    index = positions.to(hidden.device).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index)


class NonFiniteActivations(InputError):
    """The model itself produced NaN or Inf in its residual stream."""


def token_ids(values, what: str = "input_ids") -> torch.Tensor:
    """``values`` (a tensor, array or nested list of ints) as a ``torch.long`` tensor.

    The one check of every public entry point that takes token ids: floats and booleans are
    refused, never truncated (``3.9`` is not token 3, and ``-0.9`` not token 0).

    Raises:
        TypeError: ``values`` are not integers.
    """
    tensor = values if isinstance(values, torch.Tensor) else None
    if tensor is None:
        try:
            tensor = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InputTypeError(f"{what} must be integer token ids: {error}") from None
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise InputTypeError(
            f"{what} must be integer token ids, got {tensor.dtype} values; pass the ids a "
            "tokenizer returns (e.g. tokenizer(text, return_tensors='pt').input_ids)."
        )
    return tensor.long()


def check_input_ids(model: nn.Module, input_ids: torch.Tensor) -> None:
    """Refuse token ids outside the vocabulary and sequences longer than the model's context."""
    token_ids(input_ids)
    if input_ids.numel() == 0:
        raise InputError(f"input_ids are empty ({tuple(input_ids.shape)}); pass at least one token")
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    low, high = int(input_ids.min()), int(input_ids.max())
    if low < 0 or (vocab is not None and high >= vocab):
        raise InputError(
            f"input_ids hold token {low if low < 0 else high}, outside the model's vocabulary "
            f"0..{vocab - 1 if vocab else '?'}; were they made by another tokenizer?"
        )
    config = (
        model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    )
    context = getattr(config, "max_position_embeddings", None)
    if context is not None and input_ids.shape[-1] > context:
        raise InputError(
            f"the sequences are {input_ids.shape[-1]} tokens long, longer than the model's context "
            f"of {context}; shorten them."
        )


def collect_residuals(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    arch: ResolvedArch | None = None,
    positions: torch.Tensor | None = None,
    with_logits: bool = True,
    points: Points = "block",
) -> Residuals:
    """Run ``model`` once and return every residual-stream state plus its logits.

    Args:
        model: A causal LM.
        input_ids: Token ids, ``(batch, seq)``.
        attention_mask: Optional mask, ``(batch, seq)``.
        arch: Resolved modules; resolved from the model when omitted.
        positions: Keep only these positions, ``(batch, n)`` indices: states become
            ``(batch, n, d_model)``, gathered inside the hooks so full states are never stored.
        with_logits: Compute the model's logits. ``False`` stops the forward pass after the last
            block (no final norm, no unembedding over every position) and returns ``logits=None``.
        points: ``"block"`` (block inputs), ``"mid"`` (after attention, before the MLP) or
            ``"both"`` (interleaved); see :mod:`tunedlens.arch.points`.

    Returns:
        The residuals (one state per row, then the output row) and logits. Gradients are not
        tracked.

    Raises:
        NoMidPoint: mid points asked of a family whose blocks have none (parallel blocks).
    """
    arch = arch or resolve_arch(model)
    check_points(points)
    mids = mid_modules(arch, model) if points != "block" else []
    input_ids = token_ids(input_ids)
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    check_input_ids(model, input_ids)
    captured: list[torch.Tensor | None] = [None] * (output_row(points, arch.n_blocks) + 1)
    handles = []
    step = 2 if points == "both" else 1

    def save_input(index):
        def hook(_module, args, kwargs):
            state = block_input(args, kwargs)
            if state.dim() == 2:  # OPT flattens (batch, seq) before its MLP half
                state = state.view(*input_ids.shape, state.shape[-1])
            captured[index] = _select(state, positions)

        return hook

    def save_output(_module, _args, output):
        captured[-1] = _select(block_output(output), positions)
        if not with_logits:
            raise _StopForward

    try:
        if points != "mid":
            for index, block in enumerate(arch.layers):
                handles.append(
                    block.register_forward_pre_hook(save_input(step * index), with_kwargs=True)
                )
        for index, module in enumerate(mids):
            row = 2 * index + 1 if points == "both" else index
            handles.append(module.register_forward_pre_hook(save_input(row), with_kwargs=True))
        handles.append(arch.layers[-1].register_forward_hook(save_output))
        with torch.no_grad():
            output = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        output = None
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i, h in enumerate(captured) if h is None]
    if missing:
        raise RuntimeError(
            f"rows {missing} ({points} points) were not reached during the forward pass; the model "
            "skips layers or modules, which tunedlens cannot lens."
        )
    first_bad = next((i for i, h in enumerate(captured) if not bool(torch.isfinite(h).all())), None)
    if first_bad is not None:
        if points == "block":
            where = f"layer {first_bad} on (row {first_bad} = " + (
                "the embeddings)" if first_bad == 0 else f"the output of block {first_bad - 1})"
            )
        else:
            where = f"row {row_label(points, first_bad, arch.n_blocks)} on"
        raise NonFiniteActivations(
            f"the model's residual stream holds NaN or Inf from {where}; "
            f"in {next(iter(model.parameters())).dtype} this is usually an overflow: load the model "
            "in float32 or bfloat16 (--dtype)."
        )
    return Residuals(
        hidden=tuple(captured), logits=None if output is None else output.logits, points=points
    )


def _cache_argument(model: nn.Module) -> str:
    """The name ``model.forward`` takes its KV cache under.

    ``cache`` where transformers has renamed it (``past_key_values`` is then deprecated, to be
    removed in 5.40), ``past_key_values`` in earlier versions and models not yet renamed.
    """
    import inspect

    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def cached_step(model: nn.Module, input_ids: torch.Tensor, cache=None):
    """One incremental forward pass: ``(output, cache for the next step)``.

    Passes the cache under the name this transformers version takes and reads it back the same
    way, so no version warns about the other's name.
    """
    output = model(input_ids=input_ids, use_cache=True, **{_cache_argument(model): cache})
    if "cache" in output.keys():
        return output, output["cache"]
    return output, output["past_key_values"]
