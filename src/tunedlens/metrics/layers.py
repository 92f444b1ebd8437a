"""Exact per-layer KL of a lens against its own output row, chunked over tokens."""

from __future__ import annotations

import torch
from torch import nn

from tunedlens.arch.residuals import collect_residuals
from tunedlens.lenses.lens import Lens


def layer_kl(
    lens: Lens,
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    batch_size: int = 8,
    chunk_rows: int = 1024,
) -> torch.Tensor:
    """Mean KL(output row ‖ lens) in nats for every layer ``0..L-1``, over every token.

    The output row is the lens's decoding of the last block's output (the model's logits for
    lenses that use the model's head). Computed with the evaluation kernel
    (:class:`tunedlens.evaluation.kernel.BlockedHead`), full vocabulary, no vocab-sized copy.

    Args:
        lens: The lens to evaluate.
        model: Its model.
        tokens: ``(n_sequences, seq_len)`` token ids.
        batch_size: Sequences per forward pass.
        chunk_rows: Tokens per vocabulary-sized computation (bounds memory to a few
            ``chunk_rows x vocab`` floats, whatever the number of layers).

    Returns:
        ``(L,)`` float64 tensor of mean KL per layer, in nats.
    """
    from tunedlens.evaluation.kernel import BlockedHead, head_input

    n_layers = lens.n_layers
    head = BlockedHead(lens.unembed, cosine=False)
    totals = torch.zeros(n_layers, dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for start in range(0, tokens.shape[0], batch_size):
            ids = tokens[start : start + batch_size].to(lens.unembed.device)
            residuals = collect_residuals(model, ids, arch=lens.unembed.arch, with_logits=False)
            hidden = [h.flatten(0, 1) for h in residuals.hidden]
            for rows in torch.split(torch.arange(hidden[0].shape[0]), chunk_rows):
                inputs, _ = head_input(lens, hidden[n_layers][rows], n_layers)  # no scale there
                final = head.final(inputs, torch.full((len(rows),), -1))
                for layer in range(n_layers):
                    inputs, scale = head_input(lens, hidden[layer][rows], layer)
                    totals[layer] += head.stats(inputs, final, scale)["kl"].double().sum().cpu()
                count += len(rows)
    return totals / count
