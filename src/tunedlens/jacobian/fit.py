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

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from tunedlens.arch.residuals import block_input, block_output, check_input_ids, token_ids
from tunedlens.distributed import World
from tunedlens.errors import InputError
from tunedlens.jacobian.merge import (
    MergeError,
    MergePart,
    check_mergeable,
    merged_metadata,
)
from tunedlens.jacobian.state import (
    SOURCE_SETTINGS,
    FitState,
    FitStateError,
    prompts_hash,
    state_file,
)
from tunedlens.lenses.jacobian import JacobianLens
from tunedlens.lenses.unembed import Unembed
from tunedlens.sharding import is_sharded

FEW_PROMPTS = 16
"""Below this many prompts a fit warns that its middle rows are still noise.

Measured on SmolLM2-135M (``benchmarks/results/three_lenses.md``, prompts of 128 tokens): the
mean KL of rows 1-20 fell by about 1 bit from 2 to 4 prompts and by 0.3 bits more from 4 to 8,
while rows 24 and later did not move: the middle rows are still settling at 8 prompts. 16 is
the first doubling past what was measured; the published J-lenses use up to 1,000 prompts.
"""


def few_prompts_warning(n_prompts: int) -> str | None:
    """The warning a fit on ``n_prompts`` prompts deserves (``None``: enough prompts)."""
    if n_prompts >= FEW_PROMPTS:
        return None
    return (
        f"a J-lens fitted on {n_prompts} prompt{'s' * (n_prompts != 1)} is noise in its "
        f"middle rows (they still change by a bit or more between 2, 4 and 8 prompts, while the "
        f"last rows are settled); use at least {FEW_PROMPTS} prompts (--prompts) for a lens to "
        "read the middle layers with."
    )


def backward_passes(d_model: int, dim_batch: int) -> int:
    """Batched backward passes per prompt: ``d_model`` output dimensions, ``dim_batch`` at once."""
    return math.ceil(d_model / dim_batch)


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
        input_ids = token_ids(input_ids)
        if input_ids.dim() == 1:
            return [input_ids]
        if input_ids.dim() == 2:
            return list(input_ids)
        raise InputError(
            f"input_ids must be 2-D or a list of 1-D tensors, got {tuple(input_ids.shape)}"
        )
    prompts = [token_ids(ids) for ids in input_ids]
    if any(ids.dim() != 1 for ids in prompts):
        raise InputError("input_ids must be a 2-D tensor or a list of 1-D token-id tensors")
    return prompts


def prompt_jacobians(
    model: nn.Module,
    unembed: Unembed,
    ids: torch.Tensor,
    rows: Sequence[int],
    *,
    skip_first: int,
    dim_batch: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[int, torch.Tensor]:
    """One prompt's ``(d, d)`` matrix per row: rows ``i`` = output dim, columns = source dim.

    ``on_batch(done, total)`` is called after the forward pass (``done=0``) and after each
    batched backward pass of the prompt.
    """
    layers = unembed.arch.layers
    n_blocks = len(layers)
    captured: dict[int, torch.Tensor] = {}

    def save_input(index):
        def hook(_module, args, kwargs):
            hidden = block_input(args, kwargs)
            if index == 0 and not hidden.requires_grad:
                hidden.requires_grad_(True)  # the root of the graph: everything after depends on it
            captured[index] = hidden

        return hook

    def save_output(_module, _args, output):
        captured[n_blocks] = block_output(output)

    handles = [
        block.register_forward_pre_hook(save_input(i), with_kwargs=True)
        for i, block in enumerate(layers)
    ]
    handles.append(layers[-1].register_forward_hook(save_output))
    try:
        with torch.enable_grad():
            model(input_ids=ids[None].to(unembed.device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    target = captured[n_blocks]  # (1, seq, d)
    sources = [captured[row] for row in rows]
    seq_len, d_model = target.shape[1], target.shape[2]
    valid = torch.arange(skip_first, seq_len - 1, device=target.device)
    out = {row: torch.zeros(d_model, d_model, dtype=torch.float32) for row in rows}
    if on_batch is not None:
        on_batch(0, backward_passes(d_model, dim_batch))
    for start in range(0, d_model, dim_batch):
        dims = torch.arange(start, min(start + dim_batch, d_model), device=target.device)
        cotangent = torch.zeros(len(dims), *target.shape, dtype=target.dtype, device=target.device)
        cotangent[torch.arange(len(dims))[:, None], 0, valid[None, :], dims[:, None]] = 1.0
        last = start + dim_batch >= d_model
        grads = torch.autograd.grad(
            target, sources, grad_outputs=cotangent, retain_graph=not last, is_grads_batched=True
        )
        for row, grad in zip(rows, grads, strict=True):
            out[row][start : start + len(dims)] = grad[:, 0, valid].float().mean(1).cpu()
        if on_batch is not None:
            on_batch(start // dim_batch + 1, backward_passes(d_model, dim_batch))
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
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    world: World | None = None,
    on_pass: Callable[[int, int], None] | None = None,
    status: Callable[[str], None] | None = None,
) -> JacobianLens:
    """Fit a J-lens on ``input_ids``, used exactly as given.

    Args:
        model: The causal LM (float32 recommended: cotangents use the model's dtype).
        input_ids: A ``(n, seq)`` tensor, or a list of 1-D tensors of different lengths.
        skip_first: Leading positions left out of the source average (attention sinks).
        rows: Our rows to fit (``0..L-1``; default all, the embeddings included).
        dim_batch: Output dimensions per batched backward pass (memory grows with it).
        progress: Called with ``(prompts done, prompts)`` (this process's share).
        metadata: Extra provenance for the lens. Its ``data``, ``seq_len`` and ``seed``, where
            given, are recorded in the checkpoint too, and a resume with others names them.
        checkpoint: Directory for running-sum checkpoints (none when ``None``).
        checkpoint_every: Prompts between checkpoints.
        resume: Continue from the checkpoint in ``checkpoint``; the result is bit-identical to
            an uninterrupted fit. Other prompts or settings are refused.
        world: Under ``torchrun`` (:func:`tunedlens.distributed.init_world`): each process
            fits a contiguous slice of the prompts, and the sums are added with one all-reduce.
            A model whose blocks are sharded across the processes (:mod:`tunedlens.sharding`)
            is run by all of them in step; the VJPs pass through the sharded blocks.
        on_pass: Called with ``(backward passes done, backward passes)`` (this process's share)
            after every batched backward pass: progress inside a prompt.
        status: Told, in one line each, the work up front (backward passes), the expected time
            once the first pass is timed, and a warning when the prompts are too few for the
            middle rows (:data:`FEW_PROMPTS`; the count is ``metadata["packed_prompts"]`` when
            given, so that a part of a larger fit is not warned about). Without it, that
            warning is a :class:`UserWarning`.

    Returns:
        The fitted :class:`JacobianLens` (``n_prompts`` counts the prompts used; prompts of
        ``skip_first + 1`` tokens or fewer have no valid position, are skipped and counted in
        ``metadata["skipped_prompts"]``). Its metadata records the settings, the model's dtype
        and ``prompts_hash``, the hash of every prompt given (what a merge tells parts apart by).

    Raises:
        ValueError: bad arguments, or no prompt long enough.
        FitStateError: ``resume`` with no checkpoint, or one of another fit.
    """
    world = world or World()
    unembed = Unembed(model)
    n_blocks = unembed.arch.n_blocks
    rows = list(range(n_blocks)) if rows is None else sorted(set(rows))
    if not rows or any(not 0 <= row < n_blocks for row in rows):
        raise InputError(f"rows must be a non-empty selection of 0..{n_blocks - 1}, got {rows}")
    if skip_first < 0:
        raise InputError(
            f"skip_first (positions left out at the start) must be >= 0, got {skip_first}"
        )
    if dim_batch < 1:
        raise InputError(
            f"dim_batch (output dimensions per backward pass) must be >= 1, got {dim_batch}"
        )
    if checkpoint_every < 1:
        raise InputError(
            f"checkpoint_every (prompts between checkpoints) must be >= 1, got {checkpoint_every}"
        )
    if resume and checkpoint is None:
        raise InputError("resume=True needs the checkpoint directory of the fit to continue.")
    prompts = _prompts(input_ids)
    if not prompts:
        raise InputError("no prompts were given; pass at least one prompt (1-D token ids).")
    too_short = sum(ids.shape[0] <= skip_first + 1 for ids in prompts)
    if too_short == len(prompts):
        raise InputError(
            f"every prompt is {skip_first + 1} tokens or shorter, so none has a position after the "
            f"first {skip_first} (skip_first) and before the last; pass longer prompts."
        )
    for ids in prompts:
        check_input_ids(model, ids[None])
    all_prompts_hash = prompts_hash(prompts)
    # Sharded blocks run only when every process runs them: a process out of prompts of its own
    # (shares differ by one; short prompts are skipped) runs a spare one in step, unused.
    lockstep = world.size > 1 and is_sharded(model)
    spare = next(ids for ids in prompts if ids.shape[0] > skip_first + 1)[: skip_first + 2]
    mine = prompt_slice(len(prompts), world.rank, world.size)
    prompts = prompts[mine]
    dtype = str(next(model.parameters()).dtype)
    settings = {
        "skip_first": skip_first,
        "rows": rows,
        "dim_batch": dim_batch,
        "dtype": dtype,
        "unembed_hash": unembed.hash(),
        "prompts_hash": prompts_hash(prompts),
        "n_prompts": len(prompts),
        "rank": world.rank,
        "world_size": world.size,
    }
    settings.update(
        {key: value for key, value in (metadata or {}).items() if key in SOURCE_SETTINGS}
    )
    path = None if checkpoint is None else state_file(Path(checkpoint), world.rank, world.size)
    if resume:
        if not path.exists():
            raise FitStateError(
                f"resume: {path} does not exist; there is no fit to continue there."
            )
        state = FitState.load(path)
        state.check_resumable(settings, path)
    else:
        state = FitState.empty(rows, unembed.d_model, settings)
    warning = few_prompts_warning(int((metadata or {}).get("packed_prompts", len(prompts))))
    if warning is not None and world.is_primary:
        if status is not None:
            status(f"warning: {warning}")
        else:
            warnings.warn(warning, UserWarning, stacklevel=2)
    per_prompt = backward_passes(unembed.d_model, dim_batch)
    todo = prompts[state.next_index :]
    total = per_prompt * sum(ids.shape[0] > skip_first + 1 for ids in todo)
    if status is not None:
        status(
            f"fitting {len(todo)} prompt{'s' * (len(todo) != 1)}: one forward and {per_prompt} "
            f"backward passes each ({unembed.d_model} output dimensions, {dim_batch} at a time), "
            f"{total:,} backward passes in all"
        )
    timing = {"done": 0, "mark": time.perf_counter(), "forward": 0.0}

    def on_batch(done: int, _per_prompt: int) -> None:
        now = time.perf_counter()
        if done == 0:  # the prompt's forward pass is done
            if timing["done"] == 0:
                timing["forward"] = now - timing["mark"]
            timing["mark"] = now
            return
        timing["done"] += 1
        if timing["done"] == 1 and status is not None:
            backward = now - timing["mark"]
            expected = total // per_prompt * (timing["forward"] + per_prompt * backward)
            status(
                f"the first prompt's forward pass took {timing['forward']:.1f} s and its first "
                f"backward pass {backward:.1f} s: about {_duration(expected)} for the fit"
            )
        if on_pass is not None:
            on_pass(timing["done"], total)

    def jacobians(ids, report=None):
        return prompt_jacobians(
            model, unembed, ids, rows, skip_first=skip_first, dim_batch=dim_batch, on_batch=report
        )

    steps = range(state.next_index, len(prompts))
    if lockstep:
        bounds = torch.tensor([-state.next_index, len(prompts)])
        first, last = world.all_reduce_max(bounds).tolist()
        steps = range(-first, last)
    with _frozen(model):
        for step in steps:
            if step != state.next_index or step >= len(prompts):
                jacobians(spare)  # another process's prompt: run the sharded blocks with it
                continue
            ids = prompts[step]
            if ids.shape[0] > skip_first + 1:
                state.add(jacobians(ids, on_batch))
            else:
                if lockstep:
                    jacobians(spare)
                state.skip()
            if path is not None and (
                state.next_index % checkpoint_every == 0 or state.next_index == len(prompts)
            ):
                state.save(path)
            if progress is not None:
                progress(state.next_index, len(prompts))
    if world.size > 1:
        state = _reduce(state, world)
    info = {
        "estimator": "jacobian",
        "skip_first": skip_first,
        "rows": rows,
        "dtype": dtype,
        "prompts_hash": all_prompts_hash,
        "skipped_prompts": state.skipped,
        "model": getattr(model.config, "name_or_path", "") or None,
        **(metadata or {}),
    }
    return JacobianLens(unembed, state.means(), n_prompts=state.n_done, metadata=info)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def prompt_slice(n_prompts: int, rank: int, size: int) -> slice:
    """Process ``rank``'s contiguous share of ``n_prompts`` prompts (sizes differ by at most 1)."""
    base, extra = divmod(n_prompts, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def _reduce(state: FitState, world: World) -> FitState:
    """The sums and counts of every process, added with one all-reduce."""
    rows = sorted(state.totals)
    flat = torch.cat(
        [state.totals[row].reshape(-1) for row in rows]
        + [torch.tensor([state.n_done, state.skipped], dtype=torch.float64)]
    )
    world.all_reduce_sum(flat)
    size = state.totals[rows[0]].numel()
    totals = {
        row: flat[i * size : (i + 1) * size].view_as(state.totals[row])
        for i, row in enumerate(rows)
    }
    n_done, skipped = (int(x) for x in flat[-2:].tolist())
    return FitState(totals, state.settings, n_done, state.next_index, skipped)


def merge_jacobian_lenses(lenses: Sequence[JacobianLens]) -> JacobianLens:
    """One J-lens from lenses fitted on disjoint prompt slices: means weighted by ``n_prompts``.

    The lenses must be parts of one fit (:func:`tunedlens.jacobian.merge.check_mergeable`):
    the same model (head), rows and settings, each prompt in one part only. Sums are formed in
    float64. The merged metadata lists the parts
    (:func:`~tunedlens.jacobian.merge.merged_metadata`).

    Raises:
        MergeError: (a ``ValueError``) parts that must not be merged, and why.
    """
    if not lenses:
        raise MergeError("nothing to merge: pass at least one J-lens")
    for index, lens in enumerate(lenses):
        if not isinstance(lens, JacobianLens):
            raise MergeError(f"lens {index} is a {lens.kind} lens; only J-lenses can be merged")
    parts = [MergePart.of_lens(lens, index) for index, lens in enumerate(lenses)]
    check_mergeable(parts)
    first = lenses[0]
    total = sum(lens.n_prompts for lens in lenses)
    matrices = {
        row: (sum(lens.matrices[row].double() * lens.n_prompts for lens in lenses) / total).float()
        for row in first.rows
    }
    return JacobianLens(first.unembed, matrices, n_prompts=total, metadata=merged_metadata(parts))
