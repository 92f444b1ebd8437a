"""A model too big for one process: decoder blocks sharded with FSDP2, loaded shard by shard.

Under ``torchrun`` with ``--fsdp`` every process builds the model without weights (parameters on
the ``meta`` device), shards each decoder block across the processes with FSDP2
(``fully_shard``), and then reads from the checkpoint's safetensors files only the rows of each
block tensor that it keeps (``safe_open(...).get_slice``), plus the tensors every process needs
whole: the embeddings, the final norm and the unembedding (every layer's loss decodes with the
head). No process ever holds more than its shard of the blocks and those whole tensors.

A checkpoint that cannot be read that way (no safetensors files, or tensor names transformers
renames on loading) is loaded whole on every process and then sharded, after one line saying
why. A GGUF model is read from its dequantised safetensors copy (:func:`tunedlens.models.
cached_gguf`), which must exist first: dequantising is a whole-model job for one process.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tunedlens.arch.resolve import resolve_arch
from tunedlens.distributed import World
from tunedlens.errors import InputError, ModelLoadError
from tunedlens.models import (
    cached_gguf,
    check_device,
    gguf_file,
    load_model,
    load_tokenizer,
    model_source,
    resolve_dtype,
)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class ShardedSource:
    """A model checked for sharded loading, before any weight is read."""

    spec: str
    source: Path | str
    """What ``from_pretrained`` would read (a directory or a hub id)."""
    config: object
    """The model's transformers config."""
    n_blocks: int
    weights: dict[str, Path] | None
    """Tensor name -> safetensors file holding it; ``None`` when loading whole (see ``why``)."""
    why: str | None = None
    """Why the checkpoint is loaded whole on every process (``weights is None``)."""


def check_world(world: World, n_blocks: int | None = None, option: str = "--fsdp") -> None:
    """Refuse a sharded run of one process, or of more processes than the model has blocks.

    Raises:
        InputError: ``world.size < 2``, or ``world.size > n_blocks``.
    """
    if world.size < 2:
        raise InputError(
            f"{option} shards the model across the processes torchrun starts, and this is one "
            f"process: launch with torchrun --nproc-per-node N -m tunedlens ... (N >= 2), or "
            f"drop {option}."
        )
    if n_blocks is not None and world.size > n_blocks:
        raise InputError(
            f"{option}: {world.size} processes for a model of {n_blocks} decoder blocks; use at "
            f"most {n_blocks} (each process gathers a whole block while it runs and keeps the "
            "embeddings and head whole, so processes beyond the number of blocks save almost "
            "no memory)."
        )


def plan_sharded_load(spec: str, world: World, *, revision: str | None = None) -> ShardedSource:
    """Check ``spec`` for sharded loading across ``world``, reading configs and indexes only.

    Raises:
        InputError: one process, or more processes than decoder blocks (:func:`check_world`).
        ModelLoadError: a GGUF model whose safetensors copy does not exist yet; a model that
            does not exist.
    """
    from transformers import AutoConfig

    check_world(world)
    name = str(spec)
    gguf = gguf_file(name)
    if gguf is not None:
        if not gguf.exists():
            raise ModelLoadError(f"GGUF file {str(gguf)!r} does not exist; check the path.")
        source = cached_gguf(gguf)
        if source is None:
            raise ModelLoadError(
                f"--fsdp reads the GGUF model {name!r} from its dequantised safetensors copy, "
                "which is not made yet (dequantising loads the whole model, a job for one "
                f"process): make it once with `tunedlens predict {name} hello`, then rerun "
                "under torchrun."
            )
    else:
        source = model_source(name)
    try:
        config = AutoConfig.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"could not read the config of the model {name!r}: {str(error).splitlines()[0]}"
        ) from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_blocks = getattr(text, "num_hidden_layers", None)
    check_world(world, n_blocks)
    weights, why = _weight_files(source, revision)
    return ShardedSource(name, source, config, n_blocks, weights, why)


def _weight_files(source: Path | str, revision: str | None) -> tuple[dict | None, str | None]:
    """Tensor name -> file from the checkpoint's index (or its single file), or why there is none."""
    from safetensors import safe_open

    if isinstance(source, Path):
        folder = source
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(
                snapshot_download(
                    source, revision=revision, allow_patterns=["*.json", "*.safetensors"]
                )
            )
        except Exception as error:  # the hub client raises many types (offline, gated, ...)
            return None, f"its files could not be fetched ({type(error).__name__})"
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            return None, f"{INDEX_NAME} is not a safetensors index (no weight_map)"
        files = {name: folder / file for name, file in weight_map.items()}
        missing = sorted({str(path.name) for path in files.values() if not path.is_file()})
        if missing:
            return None, f"{INDEX_NAME} names files that are missing: {', '.join(missing)}"
        return files, None
    single = folder / SINGLE_NAME
    if single.is_file():  # one file: its own header is the index
        with safe_open(single, framework="pt") as handle:
            return {name: single for name in handle.keys()}, None
    return None, f"it has no {INDEX_NAME} (nor a single {SINGLE_NAME}) to read shards from"


@contextmanager
def _parameters_on_meta():
    """Modules built inside get parameters on ``meta`` (no memory); buffers stay real.

    Buffers (rotary frequencies, masks) are small and computed at construction; building them
    for real keeps them right without a second initialisation.
    """
    register = nn.Module.register_parameter

    def on_meta(module, name, parameter):
        register(module, name, parameter)
        if parameter is not None and parameter.device.type != "meta":
            meta = parameter.detach().to("meta")
            module._parameters[name] = nn.Parameter(meta, requires_grad=parameter.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def mesh_device(device: str | torch.device | None) -> torch.device:
    """The device of this process on the mesh: ``cuda`` means ``cuda:LOCAL_RANK``."""
    device = torch.device(device or "cpu")
    if device.type != "cpu" and device.index is None:
        device = torch.device(device.type, int(os.environ.get("LOCAL_RANK", "0")))
    return device


def load_sharded(
    plan: ShardedSource,
    world: World,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    revision: str | None = None,
    tokenizer=None,
    on_status: Callable[[str], None] | None = None,
):
    """The model of ``plan`` with its blocks sharded across ``world``, and its tokenizer.

    Each process reads only its rows of every block tensor; embeddings, final norm and head are
    read whole. A checkpoint that cannot be read so (``plan.why``, or tensor names the model
    does not have) is loaded whole on every process, then sharded (:func:`shard_blocks`), after
    one line to ``on_status`` saying why.

    Returns:
        ``(model, tokenizer)`` as :func:`tunedlens.models.load_model` returns them.
    """
    check_device(device)
    device = mesh_device(device)
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype == "auto":
        torch_dtype = getattr(plan.config, "dtype", None) or torch.float32
    why = plan.why
    if plan.weights is not None:
        from transformers import AutoModelForCausalLM

        with _parameters_on_meta():
            model = AutoModelForCausalLM.from_config(plan.config, dtype=torch_dtype)
        why = _unreadable(model, plan.weights)
        if why is None:
            _fill(model, plan, world, torch_dtype, device)
            return model, load_tokenizer(plan.source, revision, tokenizer)
        del model
    if on_status is not None:
        on_status(
            f"--fsdp: {plan.spec} is loaded whole on every process, then sharded, because {why}."
        )
    model, tokenizer = load_model(
        plan.spec, dtype=dtype, device=device, revision=revision, tokenizer=tokenizer
    )
    shard_blocks(model, world, device)
    return model, tokenizer


def _unreadable(model: nn.Module, weights: dict[str, Path]) -> str | None:
    """Why the checkpoint's tensors cannot fill ``model`` by name (``None`` when they can)."""
    tied = set(model.get_expanded_tied_weights_keys(all_submodels=True))
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    absent = [name for name in names if name not in weights and name not in tied]
    if absent:
        return (
            f"its checkpoint has no tensor named {absent[0]} (transformers renames this "
            f"model's tensors on loading, which sharded loading does not do)"
        )
    return None


def _fill(model: nn.Module, plan: ShardedSource, world: World, dtype, device) -> None:
    """Shard ``model``'s blocks and read every process's tensors into it."""
    from safetensors import safe_open

    layers = resolve_arch(model).layers
    _shard(model, layers, world, device)
    in_blocks = {id(p) for p in layers.parameters()}  # the sharded ones, after fully_shard
    by_file: dict[Path, list[tuple[str, nn.Parameter]]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if name in plan.weights:  # the others are tied to a loaded one (below)
            by_file.setdefault(plan.weights[name], []).append((name, parameter))
    # One file open at a time: the pages read through a file's memory map count in this
    # process's resident memory until the file is closed.
    for path, parameters in by_file.items():
        with safe_open(path, framework="pt") as handle:
            for name, parameter in parameters:
                if id(parameter) in in_blocks:
                    _load_rows(parameter, handle.get_slice(name), name, dtype, world)
                    continue
                # a copy: a tensor of the memory map would keep the file open and mapped
                data = handle.get_tensor(name).to(device=device, dtype=dtype, copy=True)
                module_name, _, leaf = name.rpartition(".")
                module = model.get_submodule(module_name)
                module._parameters[leaf] = nn.Parameter(data, requires_grad=False)
    if model.get_expanded_tied_weights_keys(all_submodels=True):
        model.tie_weights()
    if isinstance(plan.source, Path) and (plan.source / ".complete").exists():
        model.config.name_or_path = plan.spec  # a GGUF's copy: named as the user named it
    else:
        model.config.name_or_path = str(plan.source)
    model.requires_grad_(False)
    model.eval()


def _shard(model: nn.Module, layers: nn.ModuleList, world: World, device: torch.device) -> None:
    """Shard every block on the mesh and give each process room for its rows (uninitialised)."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.type, (world.size,))
    _return_gathered_memory(device)
    for block in layers:
        buffers = [
            (module, name, buffer.to(device))
            for module in block.modules()
            for name, buffer in module._buffers.items()
            if buffer is not None
        ]
        _shard_block(block, mesh)
        block.to_empty(device=device)  # this process's rows only: FSDP2 keeps the shards
        for module, name, buffer in buffers:  # to_empty emptied the (real) buffers too
            module._buffers[name] = buffer
    for name, buffer in model.named_buffers():
        if buffer.device != device:
            module_name, _, leaf = name.rpartition(".")
            model.get_submodule(module_name)._buffers[leaf] = buffer.to(device)


@torch.no_grad()
def _load_rows(parameter, rows, name: str, dtype, world: World) -> None:
    """Copy this process's rows of a checkpoint tensor into the local shard of ``parameter``.

    FSDP2 shards dim 0 the way ``torch.chunk`` does: ``ceil(n / size)`` rows per process, the
    last processes taking fewer (or none).
    """
    local = parameter.to_local()
    shape = tuple(rows.get_shape())
    if shape != tuple(parameter.shape):
        raise ModelLoadError(
            f"the checkpoint's {name} has shape {shape}, the model's config gives "
            f"{tuple(parameter.shape)}; the config and weights are of different models."
        )
    if local.numel() == 0:
        return
    start = min(world.rank * math.ceil(shape[0] / world.size), shape[0])
    local.copy_(rows[start : start + local.shape[0]].to(dtype))


_MMAP_THRESHOLD = -3  # glibc's mallopt parameter M_MMAP_THRESHOLD (malloc.h)


def _return_gathered_memory(device: torch.device) -> None:
    """On the CPU, have freed gathered weights go back to the system (glibc only).

    A block's weights are gathered into fresh tensors of a few MiB each before it runs and freed
    after. glibc serves such sizes from its heap once it has seen them freed (its mmap threshold
    grows to 32 MiB) and keeps freed heap memory for reuse, so every block gathered once stays
    resident and the process ends up holding the whole model again (measured:
    benchmarks/results/fsdp_memory.md). A fixed 1 MiB threshold serves those tensors with
    ``mmap``, which ``free`` returns at once. GPU memory (the CUDA caching allocator) reuses
    the freed blocks itself and needs nothing.
    """
    if device.type != "cpu":
        return
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(_MMAP_THRESHOLD, 1 << 20)
    except OSError:  # no C library to load by name (not glibc): nothing to tune
        pass


def _shard_block(block: nn.Module, mesh) -> None:
    """``fully_shard`` one decoder block, gathering its weights only while it runs.

    Each block is its own FSDP root (embeddings and head stay outside FSDP), and FSDP2 keeps a
    root's weights gathered after its forward unless told otherwise: every block would then stay
    whole after the first forward, and sharding would save nothing.
    """
    from torch.distributed.fsdp import fully_shard

    fully_shard(block, mesh=mesh, reshard_after_forward=True)


def shard_blocks(model: nn.Module, world: World, device: torch.device | str = "cpu") -> None:
    """Shard the decoder blocks of a loaded model across processes with FSDP2.

    Each process keeps ``1/N`` of every block's weights and gathers a block's full weights only
    while that block runs. Embeddings, final norm and unembedding stay whole on every process:
    every layer's loss needs the head. Residual-stream hooks see the same states as unsharded.
    A lens is small and stays replicated (data parallel). :func:`load_sharded` loads a model
    this way without ever holding it whole.

    Args:
        model: The frozen causal LM, fully loaded (on CPU or ``device``).
        world: The process group (``size > 1``).
        device: Device of the mesh; block shards are moved there.
    """
    from torch.distributed.device_mesh import init_device_mesh

    check_world(world)
    device = torch.device(device)
    mesh = init_device_mesh(device.type, (world.size,))
    layers = resolve_arch(model).layers
    in_blocks = {id(p) for p in layers.parameters()}
    _return_gathered_memory(device)
    for block in layers:
        _shard_block(block, mesh)
    for parameter in model.parameters():
        if id(parameter) not in in_blocks:
            parameter.data = parameter.data.to(device)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s decoder blocks are sharded with FSDP2 (every process must run them)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())
