"""collect_residuals refuses ids it cannot run, and names the layer where activations blow up."""

import pytest
import torch

from tiny_models import tiny_model
from tunedlens import collect_residuals
from tunedlens.arch.residuals import NonFiniteActivations


def test_ids_outside_the_vocabulary_or_context_are_refused(model):
    with pytest.raises(ValueError, match="token 128, outside the model's vocabulary 0..127"):
        collect_residuals(model, torch.tensor([[1, 128]]))
    with pytest.raises(ValueError, match="token -1"):
        collect_residuals(model, torch.tensor([[1, -1]]))
    with pytest.raises(ValueError, match="65 tokens long, longer than the model's context of 64"):
        collect_residuals(model, torch.ones(1, 65, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        collect_residuals(model, torch.ones(1, 4))


def test_non_finite_activations_name_the_first_layer():
    broken = tiny_model("llama")
    with torch.no_grad():
        broken.model.layers[1].mlp.down_proj.weight.fill_(float("inf"))
    with pytest.raises(NonFiniteActivations, match="from layer 2 on .*output of block 1"):
        collect_residuals(broken, torch.tensor([[3, 4, 5]]))
