import dataclasses

import pytest
import torch

from tiny_models import TINY_CONFIGS, tiny_model
from tunedlens.arch import ARCHS, ArchSpec, collect_residuals, register_arch, resolve_arch
from tunedlens.errors import ArchitectureNotFound
from tunedlens.lenses import LogitLens, Unembed

FAMILIES = sorted(ARCHS)


def test_every_registered_family_has_a_tiny_config():
    missing = sorted(set(ARCHS) - set(TINY_CONFIGS))
    assert not missing, f"registry entries without a tiny test config: {missing}"


def test_required_families_are_registered():
    required = (
        "gpt2 gpt_neo gptj gpt_neox opt bloom falcon llama mistral mixtral qwen2 qwen2_moe qwen3 "
        "qwen3_moe gemma gemma2 gemma3 gemma3_text phi phi3 olmo olmo2 stablelm starcoder2 cohere"
    ).split()
    assert set(required) <= set(ARCHS)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_output_row_reproduces_model_logits(model_type, input_ids):
    model = tiny_model(model_type)
    residuals = collect_residuals(model, input_ids)
    assert residuals.output_row == 2
    decoded = LogitLens(model)(residuals.hidden[-1], residuals.output_row)
    assert decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, residuals.logits.float(), rtol=1e-5, atol=1e-5)
    # The distribution is far from uniform, so a missing norm or post-head transform would show.
    assert residuals.logits.std() > 0.2


@pytest.mark.parametrize("model_type", FAMILIES)
def test_residuals_follow_the_hidden_states_convention(model_type, input_ids):
    model = tiny_model(model_type)
    residuals = collect_residuals(model, input_ids)
    with torch.no_grad():
        hidden_states = model(input_ids, output_hidden_states=True).hidden_states
    for i in range(residuals.output_row):  # hidden_states[i] = input of block i
        torch.testing.assert_close(residuals.hidden[i], hidden_states[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("model_type", "field"),
    [
        ("gemma2", "logit_softcap"),
        ("gemma3_text", "logit_softcap"),
        ("cohere", "logit_multiplier"),
        ("granite", "logit_multiplier"),
    ],
)
def test_post_head_transforms_are_needed(model_type, field, input_ids):
    model = tiny_model(model_type)
    arch = resolve_arch(model)
    assert getattr(arch, field) is not None
    residuals = collect_residuals(model, input_ids)
    without = Unembed(model, arch=dataclasses.replace(arch, **{field: None}))(residuals.hidden[-1])
    assert (without - residuals.logits).abs().max() > 0.1


def test_opt_project_out_is_part_of_the_head(input_ids):
    model = tiny_model("opt")
    arch = resolve_arch(model)
    assert arch.pre_unembed == (model.model.decoder.project_out,)
    assert Unembed(model).d_model == 32 and model.lm_head.weight.shape[1] == 16


def test_opt_without_final_norm(input_ids):
    from transformers import AutoModelForCausalLM

    from tiny_models import tiny_config

    config = tiny_config("opt")
    config.do_layer_norm_before = False
    model = AutoModelForCausalLM.from_config(config).eval()
    assert resolve_arch(model).final_norm is None
    residuals = collect_residuals(model, input_ids)
    torch.testing.assert_close(LogitLens(model)(residuals.hidden[-1], 2), residuals.logits)


def test_unknown_type_uses_a_verified_structural_guess(input_ids):
    model = tiny_model("llama")
    model.config.model_type = "brand_new_llm"
    arch = resolve_arch(model)
    assert arch.source == "guess"
    assert arch.spec == ArchSpec("model.layers", "model.norm")
    with pytest.warns(UserWarning, match="structural guess"):  # the head verifies the guess
        head = Unembed(model, arch=arch)
    residuals = collect_residuals(model, input_ids, arch=arch)
    torch.testing.assert_close(head(residuals.hidden[-1]), residuals.logits)


def test_unknown_type_whose_guess_fails_explains_how_to_fix():
    model = tiny_model("gemma2")  # the guess cannot know about the soft-cap
    model.config.model_type = "mystery"
    assert resolve_arch(model).source == "guess"  # blocks are found; decoding is what fails
    with pytest.raises(ArchitectureNotFound) as caught:
        LogitLens(model)
    message = str(caught.value)
    assert "model_type='mystery' is not registered" in message
    assert "rejected: decoded logits differ" in message
    assert "ModuleList with 2 entries (= num_hidden_layers): model.layers" in message
    assert "resolve_arch(model, spec=ArchSpec(" in message
    assert 'register_arch("mystery"' in message


def test_ambiguous_structure_lists_what_was_found():
    model = tiny_model("gpt2")
    model.config.model_type = "twin_towers"
    model.transformer.extra = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
    with pytest.raises(ArchitectureNotFound, match="transformer.h, transformer.extra"):
        resolve_arch(model)


def test_explicit_spec_and_register_arch(input_ids):
    model = tiny_model("gpt2")
    model.config.model_type = "custom_gpt"
    spec = ArchSpec("transformer.h", "transformer.ln_f")
    assert resolve_arch(model, spec=spec).source == "explicit"
    register_arch("custom_gpt", spec)
    try:
        assert resolve_arch(model).source == "registry"
        with pytest.raises(ValueError, match="already registered"):
            register_arch("custom_gpt", spec)
    finally:
        del ARCHS["custom_gpt"]


def test_spec_with_a_wrong_path_names_it():
    with pytest.raises(ArchitectureNotFound, match="no module at 'model.blocks'"):
        resolve_arch(tiny_model("llama"), spec=ArchSpec("model.blocks", "model.norm"))


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt"])
def test_position_gather_and_early_stop(model_type, input_ids):
    model = tiny_model(model_type)
    full = collect_residuals(model, input_ids)
    positions = torch.tensor([[0, 4, 8], [7, 1, 1]])
    partial = collect_residuals(model, input_ids, positions=positions, with_logits=False)
    assert partial.logits is None
    for layer in range(full.output_row + 1):
        expected = torch.stack([full.hidden[layer][b, positions[b]] for b in range(2)])
        torch.testing.assert_close(partial.hidden[layer], expected, rtol=1e-5, atol=1e-6)
