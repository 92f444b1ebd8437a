"""Muon on translators: the batched float32 Muon matches torch.optim.Muon layer by layer, AdamW
takes the biases, and it trains."""

import pytest
import torch

from tiny_models import tiny_model
from tunedlens.engine import layer_kl
from tunedlens.lenses import LogitLens, TunedLens
from tunedlens.train import recipe_config, train_lens
from tunedlens.train.muon import StackedMuon, muon_optimizers


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 6, 10), (2, 10, 6)])
def test_stacked_muon_matches_torch_muon_on_every_layer(shape):
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(shape, generator=generator)
    grads = [
        torch.randn(shape, generator=generator)
        * torch.tensor([1.0, 100.0, 0.01][: shape[0]])[:, None, None]
        for _ in range(3)
    ]
    stacked = torch.nn.Parameter(start.clone())
    ours = StackedMuon([stacked], lr=0.02, momentum=0.9, weight_decay=0.1)
    layers = [torch.nn.Parameter(start[i].clone()) for i in range(shape[0])]
    reference = torch.optim.Muon(
        layers, lr=0.02, momentum=0.9, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"
    )
    for grad in grads:  # three steps: momentum and Nesterov included
        stacked.grad = grad.clone()
        for i, layer in enumerate(layers):
            layer.grad = grad[i].clone()
        ours.step()
        reference.step()
    moved = stacked.detach() - start
    for i, layer in enumerate(layers):
        # torch.optim.Muon orthogonalises in bfloat16, ours in float32: equal to bfloat16 precision.
        torch.testing.assert_close(moved[i], layer.detach() - start[i], rtol=0.05, atol=2e-3)


def test_muon_optimizers_split_matrices_and_biases(model):
    lens = TunedLens.from_model(model)
    optimizers = muon_optimizers(
        list(lens.translator.parameters()),
        lr=0.01,
        momentum=0.9,
        weight_decay=0.0,
        betas=(0.9, 0.99),
    )
    assert [type(o).__name__ for o in optimizers] == ["StackedMuon", "AdamW"]
    assert optimizers[0].param_groups[0]["params"][0] is lens.translator.weight
    with pytest.raises(ValueError, match=r"\(L, m, n\) or \(m, n\)"):
        StackedMuon([torch.nn.Parameter(torch.zeros(4))])


def test_muon_trains_and_lowers_held_out_kl():
    model = tiny_model("llama", initializer_range=0.2, logit_gain=3.0)
    data = torch.randint(3, 120, (72, 16), generator=torch.Generator().manual_seed(0))
    config = recipe_config(
        "default",
        optimizer="muon",
        tokens=16 * 64,
        tokens_per_step=16 * 8,
        seq_len=16,
        batch_size=4,
        lr=1e-2,
        lstsq_init=False,
    )
    result = train_lens(TunedLens.from_model(model), model, data[:64], config)
    before = layer_kl(LogitLens(model), model, data[64:])
    after = layer_kl(result.lens, model, data[64:])
    assert after.mean() < before.mean() and (after >= 0).all()
