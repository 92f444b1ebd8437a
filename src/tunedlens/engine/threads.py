"""Worker threads and the choice of BLAS library for the readout kernel's float32 products.

Positions are independent, so on a CPU the kernel splits them among worker threads (one per
thread torch may use), each running the whole vocabulary-block loop on its share with
single-threaded libraries: no thread pool is woken per block, and nothing spins between the
product and the reductions. On CUDA the same code runs with one worker.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from tunedlens.errors import InputError

Matmul = Literal["auto", "torch", "numpy"]
# Fewest positions worth a worker thread of their own.
MIN_WORKER_COLUMNS = 32


@lru_cache(maxsize=1)
def blas_controller():
    """The BLAS libraries loaded now (numpy's), as a threadpoolctl controller; None without it."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController().select(user_api="blas")


@lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """``vendor_id`` of the first CPU (``AuthenticAMD``, ``GenuineIntel``), or ``""``."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def choose_matmul(requested: Matmul | None = None) -> Literal["torch", "numpy"]:
    """Which library multiplies float32 CPU blocks: ``"torch"`` or ``"numpy"``.

    ``"auto"`` (the default, or the ``TUNEDLENS_MATMUL`` environment variable) takes numpy's
    OpenBLAS on AMD CPUs, where it measured ~20 % faster than torch's MKL (benchmarks/results/
    eval_speed.md), and only when ``threadpoolctl`` is installed to keep OpenBLAS to one thread
    per worker; torch everywhere else. The two round differently in the last bit, so a machine's
    choice is fixed by this rule, not by timing, and results repeat exactly.
    """
    requested = requested or os.environ.get("TUNEDLENS_MATMUL", "auto")  # type: ignore[assignment]
    if requested not in ("auto", "torch", "numpy"):
        raise InputError(f"matmul must be 'auto', 'torch' or 'numpy', not {requested!r}")
    controller = blas_controller()
    has_openblas = controller is not None and any(
        lib.internal_api == "openblas" for lib in controller.lib_controllers
    )
    if requested == "numpy":
        if controller is None or not controller.lib_controllers:
            raise InputError(
                "matmul='numpy' needs threadpoolctl to keep numpy's BLAS single-threaded "
                "in each worker: pip install threadpoolctl"
            )
        return "numpy"
    if requested == "auto" and has_openblas and cpu_vendor() == "AuthenticAMD":
        return "numpy"
    return "torch"


def argmax_rows(rows: torch.Tensor) -> torch.Tensor:
    """``rows.argmax(-1)``; numpy's SIMD argmax on CPUs (torch's is ~15x slower there)."""
    if rows.device.type != "cpu":
        return rows.argmax(-1)
    return torch.from_numpy(np.argmax(rows.numpy(), axis=-1))


_POOL_LOCK = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (process id, size, pool)


def worker_pool(size: int) -> ThreadPoolExecutor:
    """A lasting pool of at least ``size`` worker threads for this process.

    Lasting, because a new thread pays for its BLAS buffers and thread-local settings on first
    use (measured ~3 % of a lens-layer). Its threads only ever run inside
    :func:`single_threaded`, so they initialise to, and keep, one torch thread each. A forked
    child (whose copy has no threads) gets a pool of its own.
    """
    global _pool
    with _POOL_LOCK:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < size:
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            pool = ThreadPoolExecutor(size, thread_name_prefix="tunedlens-kernel")
            _pool = (os.getpid(), size, pool)
        return _pool[2]


@contextmanager
def single_threaded(limit_blas: bool) -> Iterator[None]:
    """One thread each for torch (and numpy's BLAS) while the kernel's workers run."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    limits = blas_controller().limit(limits=1) if limit_blas else nullcontext()
    try:
        with limits:
            yield
    finally:
        torch.set_num_threads(previous)


def per_worker(
    n: int, work: Callable[[slice], tuple], *, workers: int, on_cpu: bool, limit_blas: bool
) -> list[tuple]:
    """``work`` on contiguous shares of ``n`` positions, one per worker thread, in order.

    Off the CPU (or with one share) ``work`` runs once on the calling thread.
    """
    workers = max(1, min(workers, n // MIN_WORKER_COLUMNS))
    bounds = [n * index // workers for index in range(workers + 1)]
    shares = [slice(bounds[i], bounds[i + 1]) for i in range(workers)]
    if not on_cpu:
        return [_without_grad(work, slice(0, n))]
    with single_threaded(limit_blas):
        if workers == 1:
            return [_without_grad(work, shares[0])]
        pool = worker_pool(workers - 1)
        futures = [pool.submit(_without_grad, work, share) for share in shares[1:]]
        first = _without_grad(work, shares[0])
        return [first] + [future.result() for future in futures]


def _without_grad(work: Callable[[slice], tuple], share: slice) -> tuple:
    """``work(share)`` with autograd off on whichever thread runs it.

    Grad mode is thread-local: a caller's ``torch.no_grad()`` does not reach the pool's threads,
    where it is on by default, and the kernel's ``out=`` products refuse inputs that require
    grad (a model's norm weights, unless frozen).
    """
    with torch.no_grad():
        return work(share)
