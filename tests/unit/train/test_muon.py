"""Muon on translators: per-layer views that share the stacked tensors, orthogonalised per-layer
updates, AdamW on biases, and it trains."""

import torch

from tiny_models import tiny_model
from tunedlens.engine import layer_kl
from tunedlens.lenses import LogitLens, TunedLens
from tunedlens.train import recipe_config, train_lens
from tunedlens.train.muon import LayerViews, muon_optimizers


def test_views_share_the_stacked_storage():
    stacked = torch.nn.Parameter(torch.zeros(3, 4, 4))
    views = LayerViews([stacked])
    assert len(views.parameters()) == 3 and all(v.is_leaf and v.shape == (4, 4) for v in views.parameters())
    with torch.no_grad():
        views.parameters()[1].add_(1.0)
    assert stacked[1].eq(1).all() and stacked[0].eq(0).all() and stacked[2].eq(0).all()
    stacked.grad = torch.arange(48.0).reshape(3, 4, 4)
    views.pass_gradients()
    assert torch.equal(views.parameters()[2].grad, stacked.grad[2])


def test_one_step_orthogonalises_each_layer_separately():
    model = tiny_model("llama")
    lens = TunedLens.from_model(model)
    weight, bias = lens.translator.weight, lens.translator.bias
    optimizers, views = muon_optimizers([weight, bias], lr=0.01, momentum=0.0, weight_decay=0.0,
                                        betas=(0.9, 0.99))  # fmt: skip
    assert [type(o).__name__ for o in optimizers] == ["Muon", "AdamW"]
    # Layer gradients of very different sizes: Muon's updates have similar sizes anyway.
    weight.grad = torch.randn_like(weight) * torch.tensor([1.0, 1000.0])[:, None, None]
    bias.grad = torch.randn_like(bias)
    before = weight.detach().clone()
    views.pass_gradients()
    for optimizer in optimizers:
        optimizer.step()
    update = weight.detach() - before
    norms = update.flatten(1).norm(dim=1)
    assert (norms > 0).all() and norms.max() / norms.min() < 1.5
    for layer in range(update.shape[0]):
        singular = torch.linalg.svdvals(update[layer] / update[layer].norm() * update.shape[-1] ** 0.5)
        assert singular.min() > 0.2 and singular.max() < 2.0  # near-orthogonal, not the raw gradient
    assert not torch.equal(bias.detach(), torch.zeros_like(bias))  # AdamW moved the biases


def test_muon_trains_and_lowers_held_out_kl():
    model = tiny_model("llama", initializer_range=0.2, logit_gain=3.0)
    data = torch.randint(3, 120, (72, 16), generator=torch.Generator().manual_seed(0))
    config = recipe_config("default", optimizer="muon", tokens=16 * 64, tokens_per_step=16 * 8,
                           seq_len=16, batch_size=4, lr=1e-2, lstsq_init=False)  # fmt: skip
    result = train_lens(TunedLens.from_model(model), model, data[:64], config)
    before = layer_kl(LogitLens(model), model, data[64:])
    after = layer_kl(result.lens, model, data[64:])
    assert after.mean() < before.mean() and (after >= 0).all()
