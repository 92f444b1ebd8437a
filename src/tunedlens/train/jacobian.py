"""Fit a Jacobian lens with the exact estimator of Gurnee et al. (2026).

For each prompt: one forward pass with the model's parameters frozen, then ``d_model`` vector-
Jacobian products of the last block's output, batched ``dim_batch`` at a time with
``torch.autograd.grad(..., is_grads_batched=True)`` (vmap over the cotangents, so the prompt is
not replicated in memory). The cotangent for output dimension ``i`` is one-hot at *every* valid
target position at once; causal attention makes the gradient at a source position ``t`` the sum
over targets ``t' ≥ t``. Rows are averaged over valid source positions (the first
``skip_first`` and the last are left out) and prompts are weighted equally. Deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from tunedlens.arch.residuals import block_input, block_output, check_input_ids
from tunedlens.lenses.jacobian import JacobianLens
from tunedlens.lenses.unembed import Unembed


@contextmanager
def _frozen(model: nn.Module):
    """Parameters without gradients for the duration (restored after)."""
    states = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for parameter, _ in states:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in states:
            parameter.requires_grad_(flag)


def _prompts(input_ids) -> list[torch.Tensor]:
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 1:
            return [input_ids]
        if input_ids.dim() == 2:
            return list(input_ids)
        raise ValueError(f"input_ids must be 2-D or a list of 1-D tensors, got {tuple(input_ids.shape)}")
    prompts = [torch.as_tensor(ids, dtype=torch.long) for ids in input_ids]
    if any(ids.dim() != 1 for ids in prompts):
        raise ValueError("input_ids must be a 2-D tensor or a list of 1-D token-id tensors")
    return prompts


def prompt_jacobians(model: nn.Module, unembed: Unembed, ids: torch.Tensor, rows: Sequence[int],
                     *, skip_first: int, dim_batch: int) -> dict[int, torch.Tensor]:  # fmt: skip
    """One prompt's ``(d, d)`` matrix per row: rows ``i`` = output dim, columns = source dim."""
    layers = unembed.arch.layers
    n_layers = len(layers)
    captured: dict[int, torch.Tensor] = {}

    def save_input(index):
        def hook(_module, args, kwargs):
            hidden = block_input(args, kwargs)
            if index == 0 and not hidden.requires_grad:
                hidden.requires_grad_(True)  # the root of the graph: everything after depends on it
            captured[index] = hidden

        return hook

    def save_output(_module, _args, output):
        captured[n_layers] = block_output(output)

    handles = [block.register_forward_pre_hook(save_input(i), with_kwargs=True)
               for i, block in enumerate(layers)]  # fmt: skip
    handles.append(layers[-1].register_forward_hook(save_output))
    try:
        with torch.enable_grad():
            model(input_ids=ids[None].to(unembed.device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    target = captured[n_layers]  # (1, seq, d)
    sources = [captured[row] for row in rows]
    seq_len, d_model = target.shape[1], target.shape[2]
    valid = torch.arange(skip_first, seq_len - 1, device=target.device)
    out = {row: torch.zeros(d_model, d_model, dtype=torch.float32) for row in rows}
    for start in range(0, d_model, dim_batch):
        dims = torch.arange(start, min(start + dim_batch, d_model), device=target.device)
        cotangent = torch.zeros(len(dims), *target.shape, dtype=target.dtype, device=target.device)
        cotangent[torch.arange(len(dims))[:, None], 0, valid[None, :], dims[:, None]] = 1.0
        last = start + dim_batch >= d_model
        grads = torch.autograd.grad(target, sources, grad_outputs=cotangent,
                                    retain_graph=not last, is_grads_batched=True)  # fmt: skip
        for row, grad in zip(rows, grads, strict=True):
            out[row][start : start + len(dims)] = grad[:, 0, valid].float().mean(1).cpu()
    return out


def fit_jacobian_lens(
    model: nn.Module,
    input_ids: torch.Tensor | Sequence[torch.Tensor],
    *,
    skip_first: int = 16,
    rows: Sequence[int] | None = None,
    dim_batch: int = 32,
    progress: Callable[[int, int], None] | None = None,
    metadata: dict | None = None,
) -> JacobianLens:
    """Fit a J-lens on ``input_ids``, used exactly as given.

    Args:
        model: The causal LM (float32 recommended: cotangents use the model's dtype).
        input_ids: A ``(n, seq)`` tensor, or a list of 1-D tensors of different lengths.
        skip_first: Leading positions left out of the source average (attention sinks).
        rows: Our rows to fit (``0..L-1``; default all, the embeddings included).
        dim_batch: Output dimensions per batched backward pass (memory grows with it).
        progress: Called with ``(prompts done, prompts)``.
        metadata: Extra provenance for the lens.

    Returns:
        The fitted :class:`JacobianLens` (``n_prompts`` counts the prompts used; prompts of
        ``skip_first + 1`` tokens or fewer have no valid position, are skipped and counted in
        ``metadata["skipped_prompts"]``).

    Raises:
        ValueError: bad arguments, or no prompt long enough.
    """
    unembed = Unembed(model)
    n_layers = unembed.arch.n_layers
    rows = list(range(n_layers)) if rows is None else sorted(set(rows))
    if not rows or any(not 0 <= row < n_layers for row in rows):
        raise ValueError(f"rows must be a non-empty selection of 0..{n_layers - 1}, got {rows}")
    if skip_first < 0 or dim_batch < 1:
        raise ValueError(f"need skip_first >= 0 and dim_batch >= 1, got {skip_first}, {dim_batch}")
    prompts = _prompts(input_ids)
    usable = [ids for ids in prompts if ids.shape[0] > skip_first + 1]
    if not usable:
        raise ValueError(
            f"every prompt is {skip_first + 1} tokens or shorter, so none has a position after the "
            f"first {skip_first} (skip_first) and before the last; pass longer prompts."
        )
    for ids in usable:
        check_input_ids(model, ids[None])
    totals = {row: torch.zeros(unembed.d_model, unembed.d_model, dtype=torch.float64) for row in rows}
    with _frozen(model):
        for done, ids in enumerate(usable, 1):
            for row, matrix in prompt_jacobians(model, unembed, ids, rows, skip_first=skip_first,
                                                dim_batch=dim_batch).items():  # fmt: skip
                totals[row] += matrix
            if progress is not None:
                progress(done, len(usable))
    info = {"estimator": "jacobian", "skip_first": skip_first, "rows": rows,
            "skipped_prompts": len(prompts) - len(usable),
            "model": getattr(model.config, "name_or_path", "") or None, **(metadata or {})}  # fmt: skip
    matrices = {row: (total / len(usable)).float() for row, total in totals.items()}
    return JacobianLens(unembed, matrices, n_prompts=len(usable), metadata=info)


def run_fit_jlens(
    model_spec: str,
    out,
    *,
    data: str | None = None,
    text_column: str = "text",
    prompts: int = 8,
    seq_len: int = 128,
    skip_first: int = 16,
    dim_batch: int = 32,
    seed: int = 0,
    dtype: str = "float32",
    device: str | None = None,
    tokenizer: str | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> JacobianLens:
    """What ``tunedlens fit-jlens`` does: check, load, pack, fit, write.

    ``prompts`` sequences of ``seq_len`` tokens of ``data`` are fitted on; the lens is written to
    ``out`` in the native format, with provenance.
    """
    from pathlib import Path

    from tunedlens.data import TextSource, pack_blocks
    from tunedlens.models import load_model, need_tokenizer
    from tunedlens.outputs import check_out_dir, publish_dir, staging_dir
    from tunedlens.provenance import environment
    from tunedlens.train.run import default_data_spec

    out = check_out_dir(Path(out), force=force)
    if prompts < 1 or seq_len <= skip_first + 1:
        raise ValueError(
            f"need --prompts >= 1 and --seq-len > --skip-first + 1, got {prompts}, {seq_len}, "
            f"{skip_first}"
        )
    spec = data or default_data_spec(model_spec)
    source = TextSource(spec, text_column)
    source.check()
    model, loaded_tokenizer = load_model(model_spec, dtype=dtype, device=device, tokenizer=tokenizer)
    blocks = pack_blocks(source, need_tokenizer(loaded_tokenizer, model_spec), seq_len=seq_len,
                         n_sequences=prompts, seed=seed)  # fmt: skip
    metadata = {"model": model_spec, "data": spec, "data_content_hash": blocks.content_hash(),
                "seq_len": seq_len, "seed": seed, "dim_batch": dim_batch, **environment()}  # fmt: skip
    lens = fit_jacobian_lens(model, blocks.tokens, skip_first=skip_first, dim_batch=dim_batch,
                             progress=progress, metadata=metadata)  # fmt: skip
    staging = staging_dir(out)
    try:
        lens.save(staging)
        publish_dir(staging, out)
    finally:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return lens
