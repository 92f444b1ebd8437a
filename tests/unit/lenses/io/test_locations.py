"""Hub lens locations, resolved against a hand-made local HF cache with HF_HUB_OFFLINE=1."""

import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from paths import DATA
from tunedlens.errors import LensFileError
from tunedlens.lenses import load_lens
from tunedlens.lenses.io.load import resolve_location as check_location
from tunedlens.lenses.io.locations import REFERENCE_SPACE, lens_dir, parse_hub_spec

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _cache_repo(cache, repo_id, repo_type, subfolder):
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    target = folder / "snapshots" / COMMIT / subfolder
    shutil.copytree(DATA / "reference" / "gpt2" / "lens", target)
    return target


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
        assert load_lens(spec, model).n_blocks == 3


def test_uncached_hub_lens_offline(hub_cache):
    with pytest.raises(LensFileError, match="not in the local Hugging Face cache"):
        lens_dir("hf:someone/missing")


def test_published_jlens_by_short_name_or_model_id_from_the_cache(hub_cache, tmp_path):
    from tunedlens.jacobian.fit import fit_jacobian_lens
    from tunedlens.lenses.io.locations import jlens_registry, published_jlens
    from tunedlens.lenses.jacobian import JacobianLens

    registry = jlens_registry()
    assert len(registry["lenses"]) == 37 and len(registry["revision"]) == 40
    assert published_jlens("Qwen/Qwen3-8B")[0] == published_jlens("qwen3-8b")[0] == "qwen3-8b"
    model = AutoModelForCausalLM.from_pretrained(DATA / "reference" / "gpt2" / "model")
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    fit_jacobian_lens(model, ids, skip_first=2).save(tmp_path / "lens.pt", format="artifact")
    entry = registry["lenses"]["gpt2-small"]
    # The layout hf_hub_download leaves: snapshots/<the pinned commit>/<the file's path>.
    folder = hub_cache / f"models--{registry['repo_id'].replace('/', '--')}"
    target = folder / "snapshots" / registry["revision"] / entry["filename"]
    target.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "lens.pt", target)
    for spec in ("jlens:gpt2-small", "jlens:openai-community/gpt2", "jlens:GPT2"):
        assert lens_dir(spec) == target
    lens = load_lens("jlens:gpt2", model)
    assert isinstance(lens, JacobianLens) and lens.rows == [1, 2] and lens.source == "jlens:gpt2"
    assert load_lens("jlens:gpt2-small", model).n_prompts == 2
    with pytest.raises(LensFileError, match="not in the local Hugging Face cache"):
        lens_dir("jlens:qwen3-8b")
    with pytest.raises(
        LensFileError, match=r"no published J-lens is called 'qwen9'.*gemma-2-2b.*qwen3-8b"
    ):
        check_location("jlens:qwen9")
