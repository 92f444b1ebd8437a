"""The residual rows a run's first epoch sampled, kept so that later epochs skip the model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

GIB = 2**30


class RowCache:
    """Rows of residual states, kept for the epochs after the first.

    A fixed number of rows, each the states of every lens row plus the output row at one
    position (``(n_points, d_model)``), and the next token where the loss needs it. Rows live in memory up to ``memory_bytes``; a larger cache is one memory-mapped file in a
    temporary directory of its own (``TMPDIR``), which :meth:`close` deletes.
    """

    def __init__(
        self,
        n_rows: int,
        n_points: int,
        d_model: int,
        *,
        dtype: torch.dtype,
        memory_bytes: float,
        with_next_ids: bool,
    ):
        self.shape = (n_rows, n_points, d_model)
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.nbytes = n_rows * n_points * d_model * itemsize
        self.directory: tempfile.TemporaryDirectory | None = None
        if self.nbytes <= memory_bytes:
            self.rows = torch.empty(self.shape, dtype=dtype)
        else:
            self.directory = tempfile.TemporaryDirectory(prefix="tunedlens-rows-")
            path = Path(self.directory.name) / "rows.bin"
            flat = torch.from_file(str(path), shared=True, size=self.rows_numel, dtype=dtype)
            self.rows = flat.view(self.shape)
        self.next_ids = torch.empty(n_rows, dtype=torch.long) if with_next_ids else None
        self.filled = 0
        self.spans: list[tuple[int, int]] = []
        """The rows of each :meth:`add`, ``(start, stop)``: one entry per micro-batch."""

    @property
    def rows_numel(self) -> int:
        """Elements of the rows tensor."""
        n_rows, n_points, d_model = self.shape
        return n_rows * n_points * d_model

    @property
    def on_disk(self) -> bool:
        """Whether the rows are a memory-mapped file (over the memory cap)."""
        return self.directory is not None

    def add(self, hidden: list[torch.Tensor], next_ids: torch.Tensor | None = None) -> None:
        """Append the rows of one micro-batch.

        ``hidden`` holds one ``(..., d_model)`` tensor per point, the same rows in each.
        """
        block = torch.stack([h.detach().reshape(-1, h.shape[-1]) for h in hidden], dim=1)
        n = block.shape[0]
        if self.filled + n > self.shape[0]:
            raise RuntimeError(f"row cache overflow: {self.filled} + {n} > {self.shape[0]} rows")
        self.rows[self.filled : self.filled + n] = block.to(device="cpu", dtype=self.rows.dtype)
        if self.next_ids is not None:
            self.next_ids[self.filled : self.filled + n] = next_ids.reshape(-1).cpu()
        self.spans.append((self.filled, self.filled + n))
        self.filled += n

    def take(
        self, index: torch.Tensor, device: torch.device | str = "cpu"
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The rows at ``index`` in float32 on ``device``.

        One ``(len(index), d_model)`` tensor per point, and their next tokens (``None`` where
        not kept).
        """
        block = self.rows[index].to(device=device, dtype=torch.float32)
        next_ids = None if self.next_ids is None else self.next_ids[index].to(device)
        return list(block.unbind(dim=1)), next_ids

    def close(self) -> None:
        """Free the rows (and delete the file, where there is one)."""
        self.rows = torch.empty(0)
        if self.directory is not None:
            self.directory.cleanup()
            self.directory = None
