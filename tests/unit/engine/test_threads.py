"""Worker threads and the BLAS choice of the readout kernel."""

import pytest


def test_matmul_choice_is_checked(monkeypatch):
    from tunedlens.engine import threads

    with pytest.raises(ValueError, match="'auto', 'torch' or 'numpy'"):
        threads.choose_matmul("blas")
    monkeypatch.setenv("TUNEDLENS_MATMUL", "torch")
    assert threads.choose_matmul() == "torch"
    monkeypatch.setattr(threads, "blas_controller", lambda: None)
    with pytest.raises(ValueError, match="pip install threadpoolctl"):
        threads.choose_matmul("numpy")
    monkeypatch.setenv("TUNEDLENS_MATMUL", "auto")
    assert threads.choose_matmul() == "torch"  # without threadpoolctl, never numpy's BLAS


def test_the_worker_pool_lasts_and_is_remade_in_a_forked_child(monkeypatch):
    from tunedlens.engine import threads

    monkeypatch.setattr(threads, "_pool", None)  # whatever earlier tests left
    pool = threads.worker_pool(1)
    assert threads.worker_pool(1) is pool
    assert threads.worker_pool(2) is not pool  # grown on demand
    grown = threads.worker_pool(1)
    monkeypatch.setattr(threads.os, "getpid", lambda: -1)  # as in a child after fork()
    assert threads.worker_pool(1) is not grown
