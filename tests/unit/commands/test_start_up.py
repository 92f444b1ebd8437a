"""The start-up every command shares: each lens location is resolved once per command."""

import sys

import pytest
import torch

import tunedlens.lenses.io.locations as locations
from tiny_models import random_lens, tiny_model
from tunedlens.jacobian.fit import fit_jacobian_lens


@pytest.fixture
def counted(monkeypatch):
    """Every call of ``lens_dir`` (the one step that resolves a location), wherever imported."""
    original, calls = locations.lens_dir, []

    def lens_dir(spec):
        calls.append(str(spec))
        return original(spec)

    for module in list(sys.modules.values()):
        if getattr(module, "lens_dir", None) is original:
            monkeypatch.setattr(module, "lens_dir", lens_dir)
    return calls


@pytest.fixture
def lenses(tiny_model_dir, tmp_path):
    model = tiny_model("llama")
    random_lens(model).save(tmp_path / "lens-a")
    random_lens(model).save(tmp_path / "lens-b")
    ids = torch.randint(4, 120, (2, 12), generator=torch.Generator().manual_seed(1))
    fit_jacobian_lens(model, ids[:1], skip_first=2).save(tmp_path / "jlens-a")
    fit_jacobian_lens(model, ids[1:], skip_first=2).save(tmp_path / "jlens-b")
    return {name: str(tmp_path / name) for name in ("lens-a", "lens-b", "jlens-a", "jlens-b")}


def test_predict_resolves_its_lens_once(tiny_model_dir, lenses, counted):
    from tunedlens.commands import predict

    predict.run(str(tiny_model_dir), "w1 w2 w3", lens=lenses["lens-a"])
    assert counted == [lenses["lens-a"]]


def test_show_resolves_each_lens_once(tiny_model_dir, lenses, counted, tmp_path):
    from tunedlens.commands import show

    show.run(
        str(tiny_model_dir),
        "w1 w2 w3",
        lenses=[lenses["lens-a"], lenses["jlens-a"]],
        out=tmp_path / "show.html",
    )
    assert sorted(counted) == sorted([lenses["lens-a"], lenses["jlens-a"]])


def test_eval_resolves_each_lens_once(tiny_model_dir, lenses, counted, text_file, tmp_path):
    from tunedlens.commands import eval as evaluation

    evaluation.run(
        str(tiny_model_dir),
        [lenses["lens-a"], lenses["lens-b"]],
        data=str(text_file),
        tokens=32,
        seq_len=16,
        out=tmp_path / "report",
        prompts="none",
        bootstrap=0,
        plots=False,
    )
    assert sorted(counted) == sorted([lenses["lens-a"], lenses["lens-b"]])


def test_serve_resolves_each_lens_once(tiny_model_dir, lenses, counted):
    from tunedlens.commands.serve import build_session

    build_session(str(tiny_model_dir), [lenses["lens-a"], lenses["jlens-b"]])
    assert sorted(counted) == sorted([lenses["lens-a"], lenses["jlens-b"]])


def test_merge_resolves_each_part_once(tiny_model_dir, lenses, counted, tmp_path):
    from tunedlens.commands import merge

    merge.run(str(tiny_model_dir), [lenses["jlens-a"], lenses["jlens-b"]], tmp_path / "merged")
    assert sorted(counted) == sorted([lenses["jlens-a"], lenses["jlens-b"]])
