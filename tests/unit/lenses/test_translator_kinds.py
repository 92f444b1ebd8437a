"""The opt-in translator kinds (diagonal, mlp): identity when untrained, file round trips, the
reference format (diagonal converts exactly, mlp is refused), and they train."""

import pytest
import torch

from tiny_models import tiny_model
from tunedlens.arch import collect_residuals
from tunedlens.engine import layer_kl
from tunedlens.errors import LensFileError
from tunedlens.lenses import DiagonalTranslator, LogitLens, MLPTranslator, TunedLens, load_lens
from tunedlens.lenses.io.info import describe_lens
from tunedlens.train import recipe_config, train_lens

KINDS = ["diagonal", "mlp"]


def _perturbed(model, kind):
    lens = TunedLens.from_model(model, translator=kind, rank=8)
    with torch.no_grad():
        for parameter in lens.translator.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return lens


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("kind", KINDS)
def test_untrained_equals_logit_lens(model_type, kind, input_ids):
    model = tiny_model(model_type)
    residuals = collect_residuals(model, input_ids)
    tuned, logit = TunedLens.from_model(model, translator=kind), LogitLens(model)
    for layer in range(residuals.output_row + 1):
        assert torch.equal(
            tuned(residuals.hidden[layer], layer), logit(residuals.hidden[layer], layer)
        )


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_and_info(kind, model, tmp_path, input_ids):
    lens = _perturbed(model, kind)
    lens.save(tmp_path / "lens")
    loaded = load_lens(tmp_path / "lens", model)
    assert loaded.translator.kind == kind
    hidden = collect_residuals(model, input_ids).hidden[1]
    assert torch.equal(loaded(hidden, 1), lens(hidden, 1))
    info = describe_lens(tmp_path / "lens")
    assert info["translator"] == kind and all(row["update_norm"] > 0 for row in info["rows"])
    parameters = sum(p.numel() for p in lens.translator.parameters())
    assert info["parameters"] == parameters


def test_diagonal_is_an_affine_map_and_converts_to_the_reference_format(model, tmp_path, input_ids):
    lens = _perturbed(model, "diagonal")
    hidden = collect_residuals(model, input_ids).hidden[1].float()
    affine = lens.translator.to_affine()
    torch.testing.assert_close(affine(hidden, 1), lens.translator(hidden, 1))
    lens.save(tmp_path / "ref", format="tuned-lens")
    converted = load_lens(tmp_path / "ref", model)
    torch.testing.assert_close(converted(hidden, 1), lens(hidden, 1))


def test_mlp_is_refused_by_the_reference_format(model, tmp_path):
    with pytest.raises(LensFileError, match="affine translators only"):
        _perturbed(model, "mlp").save(tmp_path / "ref", format="tuned-lens")
    assert not (tmp_path / "ref").exists()  # refused before anything was written


@pytest.mark.parametrize("kind", KINDS)
def test_kinds_train_and_lower_held_out_kl(kind):
    model = tiny_model("llama", initializer_range=0.2, logit_gain=3.0)
    data = torch.randint(3, 120, (72, 16), generator=torch.Generator().manual_seed(0))
    config = recipe_config(
        "default",
        translator=kind,
        rank=16,
        tokens=16 * 64,
        tokens_per_step=16 * 8,
        seq_len=16,
        batch_size=4,
        lr=1e-2,
    )
    assert not config.lstsq_init  # the least-squares start is for affine translators
    lens = TunedLens.from_model(model, translator=kind, rank=16)
    assert isinstance(lens.translator, DiagonalTranslator if kind == "diagonal" else MLPTranslator)
    result = train_lens(lens, model, data[:64], config)
    before = layer_kl(LogitLens(model), model, data[64:])
    after = layer_kl(result.lens, model, data[64:])
    assert after.mean() < before.mean() and (after >= 0).all()
