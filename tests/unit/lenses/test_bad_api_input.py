"""Bad input to the lens API: a TypeError or ValueError that says what to pass instead."""

import numpy as np
import pytest
import torch

from tunedlens import LogitLens, TunedLens


def test_hidden_states_must_be_tensors_with_a_width(model, lens):
    with pytest.raises(TypeError, match="torch.Tensor .* got a ndarray; convert it with torch.as_tensor"):
        lens(np.zeros((3, 32), dtype=np.float32), 0)
    with pytest.raises(ValueError, match="got a scalar"):
        lens(torch.tensor(1.0), 0)
    with pytest.raises(IndexError, match="layer must be an int in 0..2"):
        lens(torch.zeros(3, 32), 5)


def test_a_lens_needs_its_model(lens, tmp_path):
    lens.save(tmp_path / "lens")
    with pytest.raises(TypeError, match="model must be the Hugging Face model .* got NoneType"):
        TunedLens.load(tmp_path / "lens", None)
    with pytest.raises(TypeError, match="got str"):
        LogitLens("demo")
