"""Data-parallel training with torch.distributed: lens replicated, data sharded.

Under ``torchrun`` each process takes its share of every global micro-batch, and gradients are
averaged with one all-reduce (one flat buffer) per optimizer step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1

    @property
    def is_primary(self) -> bool:
        """Whether this process writes files and progress."""
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` across processes, in place."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Average gradients over processes with a single all-reduce."""
        if self.size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.size
        offset = 0
        for parameter, grad in zip(parameters, grads, strict=True):
            parameter.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
            offset += grad.numel()

    def barrier(self) -> None:
        """Wait for every process."""
        if self.size > 1:
            dist.barrier()


def init_world(device: torch.device | str = "cpu") -> World:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return World(rank=dist.get_rank(), size=dist.get_world_size())


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
        raise ValueError("FSDP needs several processes: launch with torchrun --nproc-per-node N")
    device = torch.device(device)
    mesh = init_device_mesh(device.type, (world.size,))
    layers = resolve_arch(model).layers
    in_blocks = {id(p) for p in layers.parameters()}
    for block in layers:
        fully_shard(block, mesh=mesh)
    for parameter in model.parameters():
        if id(parameter) not in in_blocks:
            parameter.data = parameter.data.to(device)
