"""Run a model with some decoder blocks removed: the residual stream passes them by.

Removing a block is not the same as replacing it with an identity: transformers' attention
modules index the KV cache by their ``layer_idx``, the cache is laid out from the config's
``num_hidden_layers`` (and ``layer_types``, for sliding-window families), and a model's forward
may pick each block's mask by its position. :func:`blocks_removed` therefore installs a shorter
``ModuleList`` of the kept blocks, renumbers their ``layer_idx`` (and ``layer_id``) 0..L-k-1,
shortens the config's per-layer fields to match, and restores every one of these on exit, so
the model is unchanged afterwards (even when the body raises).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from tunedlens.analyze.errors import AnalysisError
from tunedlens.arch.residuals import block_output, cached_step, collect_residuals
from tunedlens.arch.resolve import ResolvedArch, get_path, resolve_arch, text_config
from tunedlens.errors import OutOfRange

LAYER_INDEX_ATTRIBUTES = ("layer_idx", "layer_id")
"""Attributes of a block's submodules that hold its position (the KV cache's slot)."""


def check_removed(blocks: Iterable[int], n_blocks: int) -> tuple[int, ...]:
    """``blocks`` as sorted distinct block indices in ``0..n_blocks-1``, at least one kept."""
    removed = tuple(sorted(set(blocks)))
    bad = [
        b for b in removed if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < n_blocks
    ]
    if bad:
        raise OutOfRange(
            f"blocks {bad} are outside 0..{n_blocks - 1}; pass block indices of this model"
        )
    if len(removed) >= n_blocks:
        raise AnalysisError(f"cannot remove all {n_blocks} blocks; keep at least one")
    return removed


def _per_layer_fields(config, n_blocks: int) -> list[str]:
    """Config fields that hold one entry per block (``layer_types``, ``no_rope_layers``, ...)."""
    return [
        name
        for name, value in vars(config).items()
        if "layer" in name and isinstance(value, (list, tuple)) and len(value) == n_blocks
    ]


@contextmanager
def blocks_removed(
    model: nn.Module, blocks: Iterable[int], *, arch: ResolvedArch | None = None
) -> Iterator[ResolvedArch]:
    """Within the ``with`` body, ``model`` runs without the decoder blocks ``blocks``.

    Args:
        model: A causal LM.
        blocks: Indices ``0..L-1`` of the blocks to remove (none: the model as it is).
        arch: The model's resolved modules (resolved when omitted).

    Yields:
        The resolved modules of the pruned model (its ``layers`` are the kept blocks, renumbered).

    Raises:
        IndexError: a block index outside ``0..L-1``.
        ValueError: every block removed.
    """
    arch = arch or resolve_arch(model)
    layers = arch.layers
    removed = check_removed(blocks, len(layers))
    if not removed:
        yield arch
        return
    kept = [index for index in range(len(layers)) if index not in removed]
    parent_path, _, leaf = arch.spec.layers.rpartition(".")
    parent = get_path(model, parent_path) if parent_path else model
    if getattr(parent, leaf) is not layers:
        raise RuntimeError(
            f"{arch.spec.layers} is not the block list the lens resolved; resolve again"
        )
    config = text_config(model)
    saved_fields = {name: getattr(config, name) for name in _per_layer_fields(config, len(layers))}
    saved_count = getattr(config, "num_hidden_layers", None)
    renumbered: list[tuple[nn.Module, str, int]] = []
    pruned = nn.ModuleList([layers[index] for index in kept])
    try:
        for new_index, block in enumerate(pruned):
            for module in block.modules():
                for name in LAYER_INDEX_ATTRIBUTES:
                    value = getattr(module, name, None)
                    if isinstance(value, int) and not isinstance(value, bool):
                        renumbered.append((module, name, value))
                        setattr(module, name, new_index)
        for name, value in saved_fields.items():
            setattr(config, name, type(value)(value[index] for index in kept))
        if saved_count is not None:
            config.num_hidden_layers = len(kept)
        # ModuleList is an nn.Module: setattr registers the shorter list in place of the original.
        setattr(parent, leaf, pruned)
        yield dataclasses.replace(arch, layers=pruned)
    finally:
        setattr(parent, leaf, layers)
        if saved_count is not None:
            config.num_hidden_layers = saved_count
        for name, value in saved_fields.items():
            setattr(config, name, value)
        for module, name, value in reversed(renumbered):
            setattr(module, name, value)


def pruned_final_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    removed: Sequence[int],
    *,
    arch: ResolvedArch | None = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """The last kept block's output (before the final norm) with ``removed`` blocks skipped.

    Decoding it with the model's head gives the pruned model's logits.

    Args:
        model: A causal LM.
        input_ids: ``(batch, seq)`` token ids.
        removed: Block indices to skip (empty: the full model's output row).
        arch: The model's resolved modules.
        batch_size: Sequences per forward pass.

    Returns:
        ``(batch, seq, d_model)`` states in the model's dtype.
    """
    arch = arch or resolve_arch(model)
    parts = []
    with blocks_removed(model, removed, arch=arch) as pruned:
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start : start + batch_size]
            parts.append(_last_state(model, ids, pruned))
    return torch.cat(parts)


def _last_state(model: nn.Module, ids: torch.Tensor, arch: ResolvedArch) -> torch.Tensor:
    """Output of ``arch``'s last block, the forward stopped there (no norm, no unembedding)."""
    return collect_residuals(model, ids, arch=arch, with_logits=False).hidden[-1]


@torch.no_grad()
def greedy_continuation(
    model: nn.Module,
    prompts: torch.Tensor,
    n_tokens: int,
    removed: Sequence[int],
    *,
    arch: ResolvedArch | None = None,
    decode=None,
) -> torch.Tensor:
    """Greedy continuations of ``prompts`` by the model with the ``removed`` blocks skipped.

    The model runs with its KV cache (the prompts once, then one token per step): the
    renumbered ``layer_idx`` keeps each kept block's keys and values in its own slot.

    Args:
        model: A causal LM.
        prompts: ``(batch, seq)`` token ids, no padding (or ``(seq,)``).
        n_tokens: Tokens to generate.
        removed: Blocks to skip.
        arch: The model's resolved modules.
        decode: Maps the last kept block's output ``(batch, d_model)`` at the newest position to
            logits ``(batch, vocab)`` (a lens, a healed head); default: the model's own head.

    Returns:
        ``(batch, n_tokens)`` new token ids.
    """
    arch = arch or resolve_arch(model)
    device = arch.unembed.weight.device
    step = prompts.reshape(-1, prompts.shape[-1]).to(device)
    new: list[torch.Tensor] = []
    captured: list[torch.Tensor] = []
    with blocks_removed(model, removed, arch=arch) as pruned:
        handle = pruned.layers[-1].register_forward_hook(
            lambda _m, _a, output: captured.append(block_output(output)[:, -1])
        )
        past = None
        try:
            for _ in range(n_tokens):
                captured.clear()
                output, past = cached_step(model, step, past)
                logits = output.logits[:, -1] if decode is None else decode(captured[-1])
                step = logits.argmax(-1, keepdim=True).to(device)
                new.append(step.cpu())
        finally:
            handle.remove()
    return torch.cat(new, 1) if new else torch.zeros(step.shape[0], 0, dtype=torch.long)
