"""Bad input to the lens API: a TypeError, ValueError or TunedLensError that says what to pass instead."""

import re

import numpy as np
import pytest
import torch

from tunedlens import LogitLens, load_lens


def test_hidden_states_must_be_tensors_with_a_width(model, lens):
    with pytest.raises(
        TypeError, match="torch.Tensor .* got a ndarray; convert it with torch.as_tensor"
    ):
        lens(np.zeros((3, 32), dtype=np.float32), 0)
    with pytest.raises(ValueError, match="got a scalar"):
        lens(torch.tensor(1.0), 0)
    with pytest.raises(IndexError, match="layer must be an int in 0..2"):
        lens(torch.zeros(3, 32), 5)


def test_a_lens_needs_its_model(lens, tmp_path):
    lens.save(tmp_path / "lens")
    with pytest.raises(TypeError, match="model must be the Hugging Face model .* got NoneType"):
        load_lens(tmp_path / "lens", None)
    with pytest.raises(TypeError, match="got str"):
        LogitLens("demo")


@pytest.mark.parametrize(
    ("location", "message"),
    [
        (
            None,
            "a lens location must be a string or a path, got NoneType None; pass 'logit', a lens "
            "directory, hf:ORG/REPO",
        ),
        (3, "got int 3"),
        ("", "the lens location is empty; pass 'logit'"),
        ("  ", "the lens location is empty"),
        (
            "tuned-lens:",
            "'tuned-lens:' has no model id after 'tuned-lens:'; write tuned-lens:MODEL_ID",
        ),
        ("tuned-lens:@main", "has no model id after 'tuned-lens:'"),
        ("jlens:", "'jlens:' has no J-lens after 'jlens:'; write jlens:NAME"),
        ("jlens:@0123abc", "has no J-lens after 'jlens:'"),
        ("hf:", "'hf:' has no repository after 'hf:'; write hf:ORG/REPO"),
        ("hf:/@main", "has no repository after 'hf:'"),
    ],
)
def test_a_lens_location_that_names_nothing(model, location, message):
    from tunedlens.errors import LensFileError
    from tunedlens.lenses import load_lens
    from tunedlens.lenses.io.load import resolve_location as check_location

    with pytest.raises(LensFileError, match=re.escape(message)):
        load_lens(location, model)
    with pytest.raises(LensFileError, match=re.escape(message)):
        check_location(location)
