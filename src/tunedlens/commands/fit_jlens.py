"""``tunedlens fit-jlens``: fit a Jacobian lens on packed text, resumable, by parts or under torchrun."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from tunedlens.commands.common import check_resume
from tunedlens.distributed import World
from tunedlens.errors import InputError
from tunedlens.jacobian.fit import fit_jacobian_lens, prompt_slice
from tunedlens.jacobian.state import STATE_NAME, FitState
from tunedlens.lenses.io.jlens_files import JLENS_OUTPUT
from tunedlens.lenses.jacobian import JacobianLens
from tunedlens.outputs import OutputKind, staged_output, staging_dir

FIT_OUTPUT = OutputKind("a J-lens fit", (*JLENS_OUTPUT.files, f"{STATE_NAME}*.safetensors"))
"""A fit's ``--out``: the J-lens, or the checkpoints of an unfinished fit (``--force`` replaces
either)."""


def run(
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
    checkpoint_every: int | None = None,
    resume: bool = False,
    part: str | tuple[int, int] | None = None,
    force: bool = False,
    fsdp: bool = False,
    progress: Callable[[int, int], None] | None = None,
    on_pass: Callable[[int, int], None] | None = None,
    status: Callable[[str], None] | None = None,
    world: World | None = None,
    self_settings=None,
    on_sample: Callable[[int, int], None] | None = None,
) -> JacobianLens:
    """What ``tunedlens fit-jlens`` does: check, load, pack, fit, write.

    ``prompts`` sequences of ``seq_len`` tokens of ``data`` are fitted on; the lens is written to
    ``out`` in the native format, with provenance. With ``checkpoint_every`` the running sums are
    saved in ``out`` every that many prompts (and deleted when the lens is written); ``resume``
    continues from them. ``part=(i, n)`` fits only the ``i``-th of ``n`` contiguous slices of the
    prompts (merge the parts with ``tunedlens lens merge``); under ``torchrun`` the processes
    split the prompts the same way and add their sums at the end. ``fsdp`` shards the model's
    blocks across those processes (:mod:`tunedlens.sharding`), each loading only its shard.
    ``world`` is the process group to fit in (default: the one ``torchrun`` describes, left once
    the lens is written; a given one stays open for its owner). ``progress`` counts prompts,
    ``on_pass`` the batched backward passes inside them; ``status`` (the first process's) gets
    the estimate up front, the warning for too few prompts (see
    :func:`~tunedlens.jacobian.fit.fit_jacobian_lens`) and the line saying why a checkpoint is
    loaded whole instead of sharded. With ``data="self"`` the text is sampled from the model (by
    the first process) as ``self_settings`` (a :class:`~tunedlens.data.SelfTextSettings`) says,
    or reused from its cache; ``on_sample(done, total)`` counts the tokens.
    """
    from tunedlens.data import (
        TextSource,
        TokenBlocks,
        default_data_spec,
        pack_blocks,
        sample_self_text,
    )
    from tunedlens.distributed import init_world
    from tunedlens.models import check_device, load_model, model_origin, need_tokenizer
    from tunedlens.outputs import local_inputs
    from tunedlens.provenance import environment
    from tunedlens.sharding import check_world, load_sharded, plan_sharded_load

    out = Path(out)
    part = parse_part(part) if isinstance(part, str) else part
    _check_fit_options(prompts, seq_len, skip_first, dim_batch)
    check_device(device)
    owned = world is None
    world = world or init_world(device or "cpu")
    if fsdp:
        check_world(world)
    if part is not None and not (part[1] >= 1 and 0 <= part[0] < part[1] and part[1] <= prompts):
        raise InputError(f"--part I/N needs 0 <= I < N <= --prompts, got {part[0]}/{part[1]}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise InputError(f"--checkpoint-every must be at least 1, got {checkpoint_every}")
    inputs = local_inputs(model_spec, data, tokenizer)
    kept = check_resume(
        out,
        FIT_OUTPUT,
        checkpoints=f"{STATE_NAME}*.safetensors",
        resume=resume,
        force=force,
        checkpoint_every=checkpoint_every,
        sources=inputs,
        what="fit",
        checkpoint_name="J-lens fit checkpoint",
    )
    replacing = not resume and out.is_dir() and any(out.iterdir())
    spec = data or default_data_spec(model_spec)
    if resume:  # damaged checkpoints, or ones of other settings, fail now, before the model loads
        early = {"seq_len": seq_len, "seed": seed, "skip_first": skip_first, "dim_batch": dim_batch}
        for name in kept:
            FitState.load(out / name).check_resumable(early, out / name)
    source = TextSource(spec, text_column, self_settings)
    source.check(allow_self=True)
    if fsdp and source.is_self:
        raise InputError(
            "--data self samples with the whole model on one process; sample the text first "
            "(e.g. with 'tunedlens eval MODEL --data self ...') and pass its cache file to --data, "
            "or drop --fsdp."
        )
    if fsdp:  # configs and indexes only: a GGUF without its copy, or too many processes, fail now
        sharded = plan_sharded_load(model_spec, world)
        model, loaded_tokenizer = load_sharded(
            sharded,
            world,
            dtype=dtype,
            device=device,
            tokenizer=tokenizer,
            on_status=status if world.is_primary else None,
        )
    else:
        model, loaded_tokenizer = load_model(
            model_spec, dtype=dtype, device=device, tokenizer=tokenizer
        )
    if not source.is_self:  # self text names its own need of a tokenizer
        loaded_tokenizer = need_tokenizer(loaded_tokenizer, model_spec)

    def packed():  # by the first process alone: the others receive the token ids
        info, text = {}, source
        if source.is_self:
            sampled = sample_self_text(
                model,
                loaded_tokenizer,
                source.self_settings(),
                tokens_needed=prompts * seq_len,
                progress=on_sample,
                model_name=model_spec,
            )
            info, text = {"self_text": sampled.record()}, TextSource.from_self_text(sampled)
        blocks = pack_blocks(
            text,
            loaded_tokenizer,
            seq_len=seq_len,
            n_sequences=prompts,
            seed=seed,
            size_options="--prompts or --seq-len",
        )
        return info, [blocks.tokens]

    info, (tokens,) = world.from_primary(packed, what="the packing of the prompts")
    blocks = TokenBlocks(tokens, source.spec)
    metadata = {
        "model": model_spec,
        "model_source": model_origin(model_spec),
        "data": spec,
        "data_content_hash": blocks.content_hash(),
        "seq_len": seq_len,
        "seed": seed,
        "packed_prompts": prompts,
        "prompt_range": [0, prompts],
        "dim_batch": dim_batch,
        **environment(),
    }
    metadata.update(info)  # the provenance of self text
    if part is not None:
        mine = prompt_slice(len(tokens), *part)
        tokens = tokens[mine]
        metadata.update(part=f"{part[0]}/{part[1]}", prompt_range=[mine.start, mine.stop])
    # The checkpoints of a fit replacing an earlier one go beside --out and cannot be resumed
    # (the earlier fit stays in --out until the new one is done), so only the first process,
    # which alone knows that folder, writes them.
    work = None
    if checkpoint_every and not replacing:
        work = out
    elif checkpoint_every and world.is_primary:
        work = staging_dir(out)
    try:
        lens = fit_jacobian_lens(
            model,
            tokens,
            skip_first=skip_first,
            dim_batch=dim_batch,
            progress=progress if world.is_primary else None,
            on_pass=on_pass if world.is_primary else None,
            status=status if world.is_primary else None,
            metadata=metadata,
            checkpoint=work,
            checkpoint_every=checkpoint_every or 1,
            resume=resume,
            world=world,
        )
        if world.is_primary:
            with staged_output(out, FIT_OUTPUT) as staging:
                lens.save(staging)
    finally:
        if work is not None and work != out:
            shutil.rmtree(work, ignore_errors=True)
    if owned:
        world.close()
    return lens


def _check_fit_options(prompts: int, seq_len: int, skip_first: int, dim_batch: int) -> None:
    """fit-jlens's numbers, each refused with the option that holds it."""
    if prompts < 1:
        raise InputError(f"--prompts must be at least 1, got {prompts}")
    if skip_first < 0:
        raise InputError(
            f"--skip-first (positions left out at the start) must be >= 0, got {skip_first}"
        )
    if seq_len <= skip_first + 1:
        raise InputError(
            f"--seq-len {seq_len} leaves no position to average over: it must exceed --skip-first "
            f"+ 1 = {skip_first + 1} (the first --skip-first positions and the last are left out)"
        )
    if dim_batch < 1:
        raise InputError(
            f"--dim-batch (output dimensions per backward pass) must be at least 1, got {dim_batch}"
        )


def parse_part(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)``."""
    if text is None:
        return None
    index, slash, count = text.partition("/")
    if not (slash and index.strip().isdigit() and count.strip().isdigit()):
        raise InputError(f"--part must look like I/N (e.g. 0/4), got {text!r}")
    return int(index), int(count)
