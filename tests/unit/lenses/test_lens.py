import pytest
import torch

from tiny_models import tiny_model
from tunedlens.arch import collect_residuals
from tunedlens.lenses import LogitLens, LowRankTranslator, TunedLens, default_rank


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "gemma2", "opt", "cohere"])
@pytest.mark.parametrize(
    "options",
    [dict(translator="affine"), dict(translator="lowrank", use_temperature=True)],
    ids=["affine", "lowrank+temperature"],
)
def test_untrained_tuned_lens_equals_logit_lens(model_type, options, input_ids):
    model = tiny_model(model_type)
    residuals = collect_residuals(model, input_ids)
    tuned, logit = TunedLens.from_model(model, **options), LogitLens(model)
    for layer in range(residuals.output_row + 1):
        hidden = residuals.hidden[layer]
        assert torch.equal(tuned(hidden, layer), logit(hidden, layer))


def test_translators_are_float32_for_a_bf16_model(input_ids):
    model = tiny_model("llama").to(torch.bfloat16)
    lens = TunedLens.from_model(model, translator="lowrank")
    assert all(p.dtype == torch.float32 for p in lens.parameters())
    hidden = collect_residuals(model, input_ids).hidden[1]
    assert lens(hidden, 1).dtype == torch.float32


def test_trained_affine_translator_is_h_plus_wh_plus_b():
    model = tiny_model("llama")
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        lens.translator.weight.normal_()
        lens.translator.bias.normal_()
    hidden = torch.randn(4, 32)
    weight, bias = lens.translator.weight[1], lens.translator.bias[1]
    torch.testing.assert_close(lens.transform(hidden, 1), hidden + hidden @ weight.T + bias)
    torch.testing.assert_close(
        lens(hidden, 1), LogitLens(model)(hidden + hidden @ weight.T + bias, 1)
    )


def test_low_rank_converts_to_the_same_affine_map():
    translator = LowRankTranslator(3, 32, rank=4)
    with torch.no_grad():
        translator.V.normal_()
        translator.bias.normal_()
    affine = translator.to_affine()
    hidden = torch.randn(5, 32)
    for layer in range(3):
        torch.testing.assert_close(affine(hidden, layer), translator(hidden, layer))


def test_temperature_scales_logits():
    model = tiny_model("llama")
    lens = TunedLens.from_model(model, translator="lowrank", use_temperature=True)
    with torch.no_grad():
        lens.translator.log_temp[0] = torch.log(torch.tensor(2.0))
    hidden = torch.randn(3, 32)
    torch.testing.assert_close(lens(hidden, 0), LogitLens(model)(hidden, 0) / 2)
    with pytest.raises(ValueError, match="temperatures"):
        lens.translator.to_affine()


def test_default_rank_follows_the_seed_plan():
    assert [default_rank(d) for d in (576, 2048, 4096, 8192, 16384)] == [64, 64, 128, 256, 256]
    assert TunedLens.from_model(tiny_model("llama"), translator="lowrank").translator.rank == 32


@pytest.mark.parametrize("layer", [-1, 3, 1.0, True])
def test_layer_out_of_range(layer):
    lens = LogitLens(tiny_model("llama"))
    with pytest.raises(IndexError, match=r"0\.\.2"):
        lens(torch.zeros(1, 32), layer)


def test_bad_translator_options():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="one of affine, lowrank, diagonal, mlp"):
        TunedLens.from_model(model, translator="conv")
    with pytest.raises(ValueError, match="do not apply to translator='diagonal'"):
        TunedLens.from_model(model, translator="diagonal", use_bias=False)
    with pytest.raises(ValueError, match="use_temperature needs"):
        TunedLens.from_model(model, use_temperature=True)
    with pytest.raises(ValueError, match="rank must be in"):
        TunedLens.from_model(model, translator="lowrank", rank=33)
