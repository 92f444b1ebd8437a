"""The processes of a job under ``torchrun``: who this process is, and sums across processes.

Tuned-lens training (:mod:`tunedlens.train`) and J-lens fitting (:mod:`tunedlens.jacobian`) both
split their work among the processes ``torchrun`` starts; a plain run is a world of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tunedlens.errors import TunedLensError


class PrimaryFailed(TunedLensError):
    """The first process failed at work it does for all (packing the data); the others stop."""


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

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise maximum of ``tensor`` across processes, in place."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def from_primary(
        self, make: Callable[[], tuple[dict, list[torch.Tensor]]], what: str = "its work"
    ) -> tuple[dict, list[torch.Tensor]]:
        """``make()`` run by the first process alone; its result is sent to every process.

        ``make`` returns ``(info, tensors)``: a JSON-able dict and a list of tensors (sent as
        they are, with their dtypes and shapes; nothing is pickled). The other processes wait
        for them instead of doing the same work.

        Raises:
            PrimaryFailed: on the other processes, when ``make`` raised on the first one (which
                raises its own error); ``what`` names the work in the message.
        """
        if self.size == 1:
            return make()
        if self.is_primary:
            try:
                info, tensors = make()
            except Exception as error:
                self._send_header({"error": f"{type(error).__name__}: {error}"})
                raise
            header = {
                "info": info,
                "tensors": [[str(t.dtype).removeprefix("torch."), list(t.shape)] for t in tensors],
            }
            self._send_header(header)
            for tensor in tensors:
                dist.broadcast(tensor.contiguous(), src=0)
            return info, tensors
        header = self._receive_header()
        if "error" in header:
            raise PrimaryFailed(
                f"the first process, which does {what} for all, stopped: {header['error']}"
            )
        tensors = []
        for dtype, shape in header["tensors"]:
            tensor = torch.empty(shape, dtype=getattr(torch, dtype))
            dist.broadcast(tensor, src=0)
            tensors.append(tensor)
        return header["info"], tensors

    def _send_header(self, header: dict) -> None:
        data = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
        dist.broadcast(torch.tensor([data.numel()], dtype=torch.int64), src=0)
        dist.broadcast(data, src=0)

    def _receive_header(self) -> dict:
        size = torch.zeros(1, dtype=torch.int64)
        dist.broadcast(size, src=0)
        data = torch.empty(int(size.item()), dtype=torch.uint8)
        dist.broadcast(data, src=0)
        return json.loads(data.numpy().tobytes().decode())

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
        backend = "gloo"
        if torch.device(device).type == "cuda":
            # NCCL for the model's tensors on the GPU; gloo for the sums and data kept on the CPU.
            backend = "cpu:gloo,cuda:nccl"
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return World(rank=dist.get_rank(), size=dist.get_world_size())
