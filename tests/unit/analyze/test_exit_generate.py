"""Early-exit generation: no exit is the model's own greedy decoding; propagation is exact."""

import pytest
import torch

from tiny_models import random_lens, tiny_model
from tunedlens import LogitLens
from tunedlens.analyze.compute import compute_model
from tunedlens.analyze.errors import AnalysisError
from tunedlens.analyze.exit_generate import generate_with_exit

PROMPT = torch.tensor([5, 9, 17, 33, 64])


def _greedy(model, prompt, new):
    out = model.generate(
        prompt[None], max_new_tokens=new, do_sample=False, eos_token_id=[], pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "qwen3"])
def test_with_exit_disabled_generation_is_the_models_greedy_output(model_type):
    model = tiny_model(model_type)
    result = generate_with_exit(model, LogitLens(model), PROMPT, 16, measure=None)
    assert result.tokens == _greedy(model, PROMPT, 16)
    assert result.exit_rows == [2] * 16 and result.propagation == "none"
    assert result.macs == result.full_macs


def test_an_unreachable_threshold_checks_but_changes_nothing():
    model = tiny_model("llama")
    lens = random_lens(model)
    result = generate_with_exit(model, lens, PROMPT, 12, measure="max-prob", threshold=1.0)
    assert result.tokens == _greedy(model, PROMPT, 12)
    assert all(
        m > f for m, f in zip(result.macs, result.full_macs, strict=True)
    )  # two failed checks each


def test_threshold_zero_exits_at_row_zero_with_the_embeddings_reading():
    model = tiny_model("llama")
    logit = LogitLens(model)
    result = generate_with_exit(model, logit, PROMPT, 6, measure="max-prob", threshold=0.0)
    assert result.exit_rows == [0] * 6
    previous = [int(PROMPT[-1]), *result.tokens[:-1]]
    embeddings = model.get_input_embeddings()(torch.tensor(previous))
    assert result.tokens == logit(embeddings, 0).argmax(-1).tolist()


# Expected path: K/V-only where verified exact; the whole block where the attention has no
# separate K/V projections (GPT-NeoX, Phi-3) or a rotary embedding the path does not reproduce:
# Cohere's is interleaved (the structure fits, the verification against its cache rejects it).
PATHS = {
    "llama": "kv-only",
    "qwen3": "kv-only",
    "olmo2": "kv-only",
    "gemma2": "kv-only",
    "gpt_neox": "full-block",
    "phi3": "full-block",
    "cohere": "full-block",
}


@pytest.mark.parametrize("model_type", list(PATHS))
@pytest.mark.parametrize(
    ("measure", "threshold"), [("patience", 1), ("saturation", 0.2), ("step-kl", 2.0)]
)
def test_kv_only_propagation_writes_what_the_skipped_blocks_would(model_type, measure, threshold):
    model = tiny_model(model_type)
    lens = LogitLens(model)
    fast = generate_with_exit(model, lens, PROMPT, 10, measure=measure, threshold=threshold)
    slow = generate_with_exit(
        model, lens, PROMPT, 10, measure=measure, threshold=threshold, propagation="full-block"
    )
    assert fast.tokens == slow.tokens and fast.exit_rows == slow.exit_rows
    assert slow.propagation == "full-block"
    assert fast.propagation == PATHS[model_type]
    assert min(fast.exit_rows) < 2  # some token exited: its copied state was propagated


def test_exits_happen_and_are_counted_like_the_analysis():
    model = tiny_model("llama")
    result = generate_with_exit(
        model, LogitLens(model), PROMPT, 20, measure="max-prob", threshold=0.25, check_rows=[1]
    )
    assert set(result.exit_rows) <= {1, 2} and 1 in result.exit_rows
    compute = compute_model(model)
    for index, (row, macs) in enumerate(zip(result.exit_rows, result.macs, strict=True)):
        context = len(PROMPT) + index
        block = compute.blocks[0].macs(context)
        check = compute.head  # one logit-lens check at row 1
        expected = (
            block + compute.blocks[1].kv + check if row == 1 else 2 * block + check + compute.head
        )
        assert macs == expected


def test_one_token_prompts_and_bad_arguments():
    model = tiny_model("llama")
    result = generate_with_exit(
        model, LogitLens(model), torch.tensor([7]), 4, measure="entropy", threshold=1.0
    )
    assert len(result.tokens) == 4 and result.propagation == "kv-only"
    with pytest.raises(AnalysisError, match="pass the threshold"):
        generate_with_exit(model, LogitLens(model), PROMPT, 4, measure="margin")
    with pytest.raises(AnalysisError, match="margin threshold 2 is outside"):
        generate_with_exit(model, LogitLens(model), PROMPT, 4, measure="margin", threshold=2)
    with pytest.raises(AnalysisError, match="one non-empty prompt"):
        generate_with_exit(
            model, LogitLens(model), torch.zeros(2, 3, dtype=torch.long), 4, measure=None
        )


@pytest.mark.parametrize(
    ("model_type", "measure", "threshold"),
    [
        ("llama", "max-prob", 0.15),
        ("qwen3", "max-prob", 0.15),
        ("olmo2", "max-prob", 0.15),
        ("mistral", "max-prob", 0.15),
    ],
)
def test_the_caches_of_both_propagations_hold_the_same_keys_and_values(
    monkeypatch, model_type, measure, threshold
):
    import tunedlens.analyze.exit_generate as module

    made = []
    new_cache = module._new_cache
    monkeypatch.setattr(
        module, "_new_cache", lambda model: made.append(new_cache(model)) or made[-1]
    )
    model = tiny_model(model_type)
    lens = LogitLens(model)
    runs = [
        generate_with_exit(
            model, lens, PROMPT, 10, measure=measure, threshold=threshold, propagation=how
        )
        for how in ("auto", "full-block")
    ]
    assert runs[0].propagation == "kv-only" and len(set(runs[0].exit_rows)) > 1
    fast, slow = made
    for layer in range(2):
        torch.testing.assert_close(
            fast.layers[layer].keys, slow.layers[layer].keys, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            fast.layers[layer].values, slow.layers[layer].values, atol=1e-5, rtol=1e-5
        )
