"""Every branch the readout kernel takes by machine, run on every machine.

The kernel picks its matrix library by CPU vendor (numpy's OpenBLAS on AMD, torch elsewhere)
and its number of worker threads by ``torch.get_num_threads()``; off the CPU it runs one
worker. A test that only ran the branch of the machine it happened to run on once hid a crash
on Intel CPUs (worker threads have autograd on). Here each branch is forced explicitly.
"""

import pytest
import torch

from tiny_models import random_lens, tiny_model
from tunedlens import LogitLens, collect_residuals, evaluate, readout
from tunedlens.engine import threads

MATMULS = ["torch", "numpy"]


@pytest.fixture(params=MATMULS)
def matmul(request, monkeypatch):
    """The kernel's matrix library, forced through the environment variable users set."""
    if request.param == "numpy":
        pytest.importorskip("threadpoolctl")
    monkeypatch.setenv("TUNEDLENS_MATMUL", request.param)
    return request.param


@pytest.fixture(params=[1, 2])
def workers(request):
    """The kernel runs ``torch.get_num_threads()`` workers: 1, or 2 (the pool's threads)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.fixture
def trainable_model():
    """A tiny llama whose weights require grad, as a model built by hand (not load_model)."""
    model = tiny_model("llama")
    model.requires_grad_(True)
    return model


def _direct_kl(model, lens, ids):
    """Per-row KL(model || lens) at every position, in float64, without the kernel."""
    residuals = collect_residuals(model, ids)
    with torch.no_grad():
        target = residuals.logits.double().log_softmax(-1)
        rows = [lens(h, row).double().log_softmax(-1) for row, h in enumerate(residuals.hidden)]
    return torch.stack([(target.exp() * (target - row)).sum(-1) for row in rows], 1)


@pytest.mark.parametrize("vendor", ["AuthenticAMD", "GenuineIntel", ""])
@pytest.mark.parametrize("openblas", [True, False])
def test_auto_takes_numpy_only_on_amd_with_openblas(vendor, openblas, monkeypatch):
    class Library:
        internal_api = "openblas" if openblas else "mkl"

    class Controller:
        lib_controllers = (Library(),)

    monkeypatch.delenv("TUNEDLENS_MATMUL", raising=False)
    monkeypatch.setattr(threads, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(threads, "blas_controller", lambda: Controller())
    expected = "numpy" if vendor == "AuthenticAMD" and openblas else "torch"
    assert threads.choose_matmul() == expected
    assert threads.choose_matmul("torch") == "torch"
    assert threads.choose_matmul("numpy") == "numpy"


def test_cpu_vendor_reads_proc_cpuinfo():
    vendor = threads.cpu_vendor()
    assert isinstance(vendor, str)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            expected = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("vendor_id")),
                "",
            )
    except OSError:
        expected = ""
    assert vendor == expected


def test_readout_on_a_model_that_requires_grad(matmul, workers, trainable_model):
    # 2 x 60 positions: enough for two workers (MIN_WORKER_COLUMNS each).
    ids = torch.randint(3, 120, (2, 60), generator=torch.Generator().manual_seed(4))
    lens = random_lens(trainable_model)
    with torch.enable_grad():  # as in a notebook cell, outside any no_grad
        result = readout(
            trainable_model,
            {"logit": LogitLens(trainable_model), "tuned": lens},
            ids,
            stats=("kl", "entropy"),
        )
    for name, each in (("logit", LogitLens(trainable_model)), ("tuned", lens)):
        expected = _direct_kl(trainable_model, each, ids)
        got = result[name]["kl"]
        assert not got.requires_grad
        torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-5)


def test_evaluate_on_a_model_that_requires_grad(matmul, workers, trainable_model):
    tokens = torch.randint(3, 120, (2, 48), generator=torch.Generator().manual_seed(5))
    lens = random_lens(trainable_model)
    with torch.enable_grad():
        report = evaluate(trainable_model, lens, tokens, bootstrap=0)
    for name, each in (("logit", LogitLens(trainable_model)), ("tuned", lens)):
        expected = _direct_kl(trainable_model, each, tokens).mean((0, 2))
        got = torch.tensor(report.metrics["lenses"][name]["kl_nats"], dtype=torch.float64)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


def test_per_worker_runs_without_grad_on_every_thread_and_off_the_cpu():
    seen = []

    def work(share):
        seen.append(torch.is_grad_enabled())
        return (share,)

    with torch.enable_grad():
        threads.per_worker(128, work, workers=2, on_cpu=True, limit_blas=False)
        threads.per_worker(128, work, workers=2, on_cpu=False, limit_blas=False)
    assert seen == [False, False, False]  # two CPU workers, then one off the CPU


def test_load_model_returns_frozen_weights(tiny_model_dir):
    from tunedlens import load_model

    model, _ = load_model(tiny_model_dir)
    assert not any(parameter.requires_grad for parameter in model.parameters())
