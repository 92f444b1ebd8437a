"""``load_lens``: one resolver for the logit lens, lens directories of every format and hub locations."""

import pytest
import torch

from paths import DATA
from tunedlens import LogitLens, TunedLens, load_lens
from tunedlens.errors import LensFileError, LensMismatch
from tunedlens.lenses.io.load import lens_name


def test_logit_and_lens_objects(model, lens):
    assert isinstance(load_lens("logit", model), LogitLens)
    assert load_lens(lens, model) is lens


@pytest.mark.parametrize("format", ["native", "tuned-lens"])
def test_directories_of_every_format(model, lens, tmp_path, format):
    lens.save(tmp_path / "lens", format=format)
    loaded = load_lens(tmp_path / "lens", model)
    assert isinstance(loaded, TunedLens) and loaded.kind == "tuned"
    assert loaded.source == str(tmp_path / "lens")
    for a, b in zip(loaded.translator.parameters(), lens.translator.parameters(), strict=True):
        assert torch.equal(a, b)


def test_reference_fixture_and_errors(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(DATA / "reference" / "llama" / "model")
    assert isinstance(load_lens(DATA / "reference" / "llama" / "lens", model), TunedLens)
    with pytest.raises(LensFileError, match="no lens directory"):
        load_lens(tmp_path / "missing", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LensFileError, match="holds no lens"):
        load_lens(tmp_path / "empty", model)
    from tiny_models import tiny_model

    with pytest.raises(LensMismatch):
        load_lens(DATA / "reference" / "llama" / "lens", tiny_model("gpt2"))


def test_lens_names_are_short_and_unique():
    assert lens_name("runs/lens-a/", {}) == "lens-a"
    assert lens_name("hf:org/repo/sub@v1", {}) == "sub"
    assert lens_name("x/lens-a", {"lens-a": None}) == "lens-a'"
    assert lens_name("logit", {}) == "logit"
