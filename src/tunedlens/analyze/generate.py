"""Generate text from an intermediate layer: each new token is what the lens reads there.

The model runs with its KV cache: the prompt once, then only each new token (the reference
re-feeds the whole sequence together with the cache, which repeats positions after the first
step). The state of ``layer`` at the newest position is captured by a hook and decoded by the
lens; the upper layers still run so the cache stays complete for later steps.
"""

from __future__ import annotations

import torch
from torch import nn

from tunedlens.arch.residuals import block_input, block_output, cached_step
from tunedlens.errors import InputError


@torch.no_grad()
def generate(
    lens,
    model: nn.Module,
    layer: int,
    input_ids: torch.Tensor,
    max_new_tokens: int = 20,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    eos_token_id: int | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Continue ``input_ids`` ``(seq,)`` or ``(batch, seq)`` with tokens decoded at ``layer``.

    Args:
        lens: The lens (``layer == L`` decodes the last block's output: the model itself).
        model: Its causal LM.
        layer: Layer row ``0..L``.
        input_ids: The prompt (no padding).
        max_new_tokens: Tokens to add.
        do_sample: Sample from the lens's distribution instead of taking its argmax.
        temperature: Divides the logits when sampling.
        eos_token_id: Stop once every sequence has produced it.
        seed: Seeds sampling.

    Returns:
        ``(batch, seq + new)`` token ids (a 1-D prompt gives a 1-D result).
    """
    lens.check_row(layer)
    if temperature <= 0:
        raise InputError(f"temperature must be > 0, got {temperature}")
    squeeze = input_ids.dim() == 1
    ids = input_ids.unsqueeze(0) if squeeze else input_ids
    if ids.shape[1] == 0:
        raise InputError("the prompt is empty; give at least one token")
    arch = lens.unembed.arch
    captured: list[torch.Tensor] = []
    if layer < lens.output_row:
        handle = arch.layers[layer].register_forward_pre_hook(
            lambda _m, args, kwargs: captured.append(block_input(args, kwargs)[:, -1]),
            with_kwargs=True,
        )
    else:
        handle = arch.layers[-1].register_forward_hook(
            lambda _m, _a, output: captured.append(block_output(output)[:, -1])
        )
    generator = None if seed is None else torch.Generator(device=ids.device).manual_seed(seed)
    device = lens.unembed.device
    tokens, step_input, past, done = ids, ids.to(device), None, None
    try:
        for _ in range(max_new_tokens):
            captured.clear()
            _, past = cached_step(model, step_input, past)
            logits = lens(captured[-1], layer)
            if do_sample:
                probs = (logits / temperature).softmax(-1)
                new = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                new = logits.argmax(-1)
            if eos_token_id is not None and done is not None:
                new = torch.where(done, torch.full_like(new, eos_token_id), new)
            tokens = torch.cat([tokens, new[:, None].to(tokens.device)], 1)
            step_input = new[:, None].to(device)
            if eos_token_id is not None:
                done = (new == eos_token_id) if done is None else done | (new == eos_token_id)
                if bool(done.all()):
                    break
    finally:
        handle.remove()
    return tokens[0] if squeeze else tokens
