"""The processes of a job under ``torchrun``: who this process is, and sums across processes.

Tuned-lens training (:mod:`tunedlens.train`) and J-lens fitting (:mod:`tunedlens.jacobian`) both
split their work among the processes ``torchrun`` starts; a plain run is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a job."""

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

    def close(self) -> None:
        """Leave the process group once every process is done with it.

        The barrier first: a process tearing its group down while another still talks to it
        can abort the other (gloo's threads end with ``terminate called without an active
        exception``).
        """
        if self.size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def init_world(device: torch.device | str = "cpu") -> World:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return World(rank=dist.get_rank(), size=dist.get_world_size())
