"""Generation from a layer: the output row is the model's greedy decoding; the cache is right."""

import pytest
import torch

from tiny_models import random_lens, tiny_model
from tunedlens import LogitLens, collect_residuals
from tunedlens.analyze.generate import generate


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gpt_neox"])
def test_greedy_from_the_output_row_equals_model_generate(model_type, input_ids):
    model = tiny_model(model_type)
    lens = LogitLens(model)
    prompt = input_ids[:1, :5]
    ours = generate(lens, model, lens.output_row, prompt, max_new_tokens=8)
    theirs = model.generate(
        prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0
    )
    assert torch.equal(ours, theirs)


def test_cached_generation_equals_recomputing_every_step(input_ids):
    model = tiny_model("llama")
    lens = random_lens(model, scale=0.3)
    prompt = input_ids[0, :4]
    cached = generate(lens, model, 1, prompt, max_new_tokens=6)
    tokens = prompt[None]
    for _ in range(6):  # no cache: run the whole sequence again, read layer 1 at the end
        state = collect_residuals(model, tokens).hidden[1][:, -1]
        tokens = torch.cat([tokens, lens(state, 1).argmax(-1, keepdim=True)], 1)
    assert cached.dim() == 1 and torch.equal(cached, tokens[0])


def test_sampling_is_seeded_and_eos_stops(input_ids):
    model = tiny_model("llama")
    lens = LogitLens(model)
    prompt = input_ids[:, :4]
    first = generate(lens, model, 1, prompt, 5, do_sample=True, temperature=0.7, seed=3)
    again = generate(lens, model, 1, prompt, 5, do_sample=True, temperature=0.7, seed=3)
    assert torch.equal(first, again) and first.shape == (2, 9)
    greedy = generate(lens, model, 2, prompt[:1], 5)
    stop = int(greedy[0, 4])
    short = generate(lens, model, 2, prompt[:1], 5, eos_token_id=stop)
    assert short.shape[1] == 5
    with pytest.raises(ValueError, match="temperature"):
        generate(lens, model, 1, prompt, 2, do_sample=True, temperature=0)
    with pytest.raises(IndexError):
        generate(lens, model, 9, prompt, 2)


def test_generation_passes_the_cache_under_the_name_transformers_takes(input_ids, recwarn):
    """No deprecation warning for ``past_key_values``, and the cache is really used: the second
    step feeds one token only, so without the cache its logits would differ."""
    import inspect
    import logging

    from tunedlens.arch.residuals import cached_step

    model = tiny_model("llama")
    handler_records = []

    class Collect(logging.Handler):
        def emit(self, record):
            handler_records.append(record.getMessage())

    collector = Collect()
    logging.getLogger("transformers").addHandler(collector)
    try:
        generate(LogitLens(model), model, 1, input_ids[:1, :5], max_new_tokens=3)
        first, cache = cached_step(model, input_ids[:1, :5])
        second, _ = cached_step(model, input_ids[:1, 5:6], cache)
    finally:
        logging.getLogger("transformers").removeHandler(collector)
    messages = [str(w.message) for w in recwarn] + handler_records
    assert not [m for m in messages if "past_key_values" in m], messages
    full = model(input_ids[:1, :6]).logits[0, -1]
    torch.testing.assert_close(second.logits[0, -1], full, atol=1e-4, rtol=1e-4)
    if "cache" in inspect.signature(model.forward).parameters:  # the renamed argument is used
        assert "cache" in first.keys()
