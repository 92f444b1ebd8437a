import pytest
import torch

import tunedlens.lenses.unembed as unembed_module
from tiny_models import tiny_model
from tunedlens.arch import collect_residuals
from tunedlens.lenses import LogitLens, Unembed


def test_head_is_shared_not_copied():
    model = tiny_model("llama")
    unembed = Unembed(model)
    assert unembed.unembedding.weight.data_ptr() == model.lm_head.weight.data_ptr()
    assert unembed.final_norm is model.model.norm


def test_low_precision_model_decodes_in_float32(input_ids):
    model = tiny_model("llama").to(torch.bfloat16)
    residuals = collect_residuals(model, input_ids)
    unembed = Unembed(model)
    logits = unembed(residuals.hidden[-1])
    assert logits.dtype == torch.float32
    # The matrix stays the model's bf16 tensor; only the O(d) norm is copied to float32.
    assert unembed.unembedding.weight.dtype == torch.bfloat16
    assert unembed.final_norm is not model.model.norm
    hidden = residuals.hidden[-1].float()
    norm = model.model.norm
    variance = hidden.pow(2).mean(-1, keepdim=True)
    normed = hidden * torch.rsqrt(variance + norm.variance_epsilon) * norm.weight.float()
    expected = normed @ model.lm_head.weight.float().T
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-4)


def test_chunked_cast_equals_whole_matrix(monkeypatch, input_ids):
    model = tiny_model("gpt2").to(torch.float16)
    hidden = collect_residuals(model, input_ids).hidden[-1]
    whole = Unembed(model)(hidden)
    monkeypatch.setattr(unembed_module, "_VOCAB_CHUNK", 7)
    torch.testing.assert_close(Unembed(model)(hidden), whole, rtol=1e-5, atol=1e-5)


def test_skip_norm_and_final_norm_override(input_ids):
    model = tiny_model("llama")
    hidden = collect_residuals(model, input_ids).hidden[1]
    raw = LogitLens(model, skip_norm=True)(hidden, 1)
    torch.testing.assert_close(raw, model.lm_head(hidden))
    other = model.model.layers[0].input_layernorm
    custom = LogitLens(model, final_norm="model.layers.0.input_layernorm")(hidden, 1)
    torch.testing.assert_close(custom, model.lm_head(other(hidden)))


def test_hash_is_robust_to_dtype():
    model = tiny_model("llama")
    reference = Unembed(model).hash()
    assert Unembed(model.to(torch.bfloat16)).hash() == reference


def test_width_mismatch_is_a_clear_error():
    lens = LogitLens(tiny_model("llama"))
    with pytest.raises(Exception, match="width 16, the model's residual stream is 32"):
        lens(torch.zeros(3, 16), 0)
