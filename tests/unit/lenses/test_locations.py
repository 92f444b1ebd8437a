"""Hub lens locations, resolved against a hand-made local HF cache with HF_HUB_OFFLINE=1."""

import shutil

import pytest
from transformers import AutoModelForCausalLM

from paths import DATA
from tunedlens.errors import LensFileError
from tunedlens.lenses import TunedLens
from tunedlens.lenses.locations import REFERENCE_SPACE, lens_dir, parse_hub_spec

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache, repo_id, repo_type, subfolder):
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    target = folder / "snapshots" / COMMIT / subfolder
    shutil.copytree(DATA / "reference" / "gpt2" / "lens", target)
    return target


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_parse_hub_spec():
    assert parse_hub_spec("hf:org/repo/lenses/gpt2@v1") == (
        "org/repo",
        "lenses/gpt2",
        "v1",
        "model",
    )
    assert parse_hub_spec("tuned-lens:gpt2") == (REFERENCE_SPACE, "lens/gpt2", None, "space")
    with pytest.raises(LensFileError, match="hf:ORG/REPO"):
        parse_hub_spec("hf:justone")


def test_lens_from_cached_model_repo_and_reference_space(hub_cache):
    _cache_repo(hub_cache, "someone/lenses", "model", "gpt2-tiny")
    _cache_repo(hub_cache, REFERENCE_SPACE, "space", "lens/tiny-gpt2")
    model = AutoModelForCausalLM.from_pretrained(DATA / "reference" / "gpt2" / "model")
    for spec in ("hf:someone/lenses/gpt2-tiny", "tuned-lens:tiny-gpt2"):
        assert (lens_dir(spec) / "params.pt").exists()
        assert TunedLens.load(spec, model).n_layers == 3


def test_uncached_hub_lens_offline(hub_cache):
    with pytest.raises(LensFileError, match="not in the local Hugging Face cache"):
        lens_dir("hf:someone/missing")
