"""Data-parallel training with torch.distributed: lens replicated, data sharded.

Under ``torchrun`` each process takes its share of every global micro-batch, and gradients are
averaged with one all-reduce (one flat buffer) per optimizer step (:class:`tunedlens.distributed.World`);
:func:`shard_blocks` shards a model too big for one device.
"""

from __future__ import annotations

import torch

from tunedlens.distributed import World
from tunedlens.errors import InputError


def shard_blocks(model: torch.nn.Module, world: World, device: torch.device | str = "cpu") -> None:
    """Shard the model's decoder blocks across processes with FSDP2, for models too big for one.

    Each process keeps ``1/N`` of every block's weights and gathers a block's full weights only
    while that block runs. Embeddings, final norm and unembedding stay whole on every process:
    every layer's loss needs the head. Residual-stream hooks see the same states as unsharded.
    The lens itself is small and stays replicated (data parallel, as without FSDP).

    Args:
        model: The frozen causal LM, fully loaded (on CPU or ``device``).
        world: The process group (``size > 1``).
        device: Device of the mesh; block shards are moved there.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from tunedlens.arch.resolve import resolve_arch

    if world.size < 2:
        raise InputError("FSDP needs several processes: launch with torchrun --nproc-per-node N")
    device = torch.device(device)
    mesh = init_device_mesh(device.type, (world.size,))
    layers = resolve_arch(model).layers
    in_blocks = {id(p) for p in layers.parameters()}
    for block in layers:
        fully_shard(block, mesh=mesh)
    for parameter in model.parameters():
        if id(parameter) not in in_blocks:
            parameter.data = parameter.data.to(device)
