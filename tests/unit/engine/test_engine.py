"""The readout engine against direct full-vocabulary computations, and its bad input."""

import math

import pytest
import torch

from tiny_models import random_lens, tiny_model
from tunedlens import LogitLens, TunedLens, collect_residuals
from tunedlens.engine import STAT_NAMES, divergences, readout
from tunedlens.errors import LensMismatch


def _direct(lens, hidden, row):
    with torch.no_grad():
        return lens(hidden, row).double().log_softmax(-1)


@pytest.mark.parametrize("model_type", ["llama", "phi", "gemma2"])
def test_every_statistic_matches_a_direct_computation(model_type, input_ids):
    model = tiny_model(model_type)
    lens = random_lens(model)
    tokens = torch.tensor([5, 17, 99])
    result = readout(
        model, {"tuned": lens}, input_ids, stats=STAT_NAMES, top_k=4, tokens=tokens, logprobs=True
    )
    residuals = collect_residuals(model, input_ids)
    final = residuals.logits.double().log_softmax(-1)
    targets = torch.cat([input_ids[:, 1:], torch.full_like(input_ids[:, :1], -1)], 1)
    grids = result["tuned"]
    for row in range(lens.output_row + 1):
        logprobs = _direct(lens, residuals.hidden[row], row)  # (batch, seq, vocab)
        probs = logprobs.exp()
        torch.testing.assert_close(grids.logprobs[:, row].double(), logprobs, atol=1e-5, rtol=0)
        kl = (final.exp() * (final - logprobs)).sum(-1)
        torch.testing.assert_close(grids["kl"][:, row].double(), kl, atol=2e-5, rtol=0)
        entropy = -(probs * logprobs).sum(-1)
        torch.testing.assert_close(grids["entropy"][:, row].double(), entropy, atol=2e-5, rtol=0)
        torch.testing.assert_close(
            grids["max-prob"][:, row].double(), probs.amax(-1), atol=1e-6, rtol=0
        )
        target_lp = logprobs.gather(-1, targets.clamp_min(0)[..., None])[..., 0]
        has = targets >= 0
        torch.testing.assert_close(
            grids["ce"][:, row][has].double(), -target_lp[has], atol=2e-5, rtol=0
        )
        assert (
            torch.isnan(grids["ce"][:, row][~has]).all()
            and torch.isnan(grids["rank"][:, row][~has]).all()
        )
        ranks = 1 + (logprobs > target_lp[..., None]).sum(-1)
        assert torch.equal(grids["rank"][:, row][has].long(), ranks[has])
        torch.testing.assert_close(
            grids["prob"][:, row][has].double(), target_lp[has].exp(), atol=1e-6, rtol=0
        )
        model_top = final.argmax(-1)
        model_rank = 1 + (logprobs > logprobs.gather(-1, model_top[..., None])).sum(-1)
        assert torch.equal(grids["model-rank"][:, row].long(), model_rank)
        top_probs, top_ids = probs.topk(4, dim=-1)
        assert torch.equal(grids.top_ids[:, row], top_ids)
        torch.testing.assert_close(grids.top_probs[:, row].double(), top_probs, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            grids.token_probs[:, row].double(), probs[..., tokens], atol=1e-6, rtol=0
        )
        token_ranks = 1 + (logprobs[..., None, :] > logprobs[..., tokens, None]).sum(-1)
        assert torch.equal(grids.token_ranks[:, row].long(), token_ranks)
        centred = logprobs - logprobs.mean(-1, keepdim=True)
        final_centred = final - final.mean(-1, keepdim=True)
        cos = torch.nn.functional.cosine_similarity(centred, final_centred, dim=-1)
        torch.testing.assert_close(grids["cos"][:, row].double(), cos, atol=1e-5, rtol=0)
    # The output row is the model itself: its own top token, KL 0.
    assert torch.equal(grids.top_ids[:, -1, :, 0], residuals.logits.argmax(-1))
    assert grids["kl"][:, -1].abs().max() < 1e-5


def test_a_padded_batch_reads_like_each_prompt_alone(model, lens):
    prompts = [[5, 9, 33, 2, 71, 8], [40, 3, 12], [7, 7, 7, 100]]
    batch = readout(model, [lens], prompts, top_k=3)
    assert batch.positions.shape == (3, 6) and (batch.positions[1, 3:] == -1).all()
    for index, prompt in enumerate(prompts):
        alone = readout(model, [lens], torch.tensor([prompt]), top_k=3)
        width = len(prompt)
        for stat in ("entropy", "kl", "ce", "max-prob"):
            torch.testing.assert_close(
                batch["tuned"][stat][index, :, :width],
                alone["tuned"][stat][0],
                atol=1e-5,
                rtol=1e-5,
                equal_nan=True,
            )
        assert torch.equal(batch["tuned"].top_ids[index, :, :width], alone["tuned"].top_ids[0])
        assert torch.isnan(batch["tuned"]["kl"][index, :, width:]).all()
    last = readout(model, [lens], prompts, positions=-1, top_k=1)  # each prompt's own last token
    assert last.positions[:, 0].tolist() == [5, 2, 3]
    for index in range(3):
        column = batch.positions[index].tolist().index(last.positions[index, 0])
        torch.testing.assert_close(
            last["tuned"]["kl"][index, :, 0],
            batch["tuned"]["kl"][index, :, column],
            atol=1e-5,
            rtol=1e-5,
        )


def test_rows_positions_transfer_pairs_and_a_small_memory_budget(model, lens, input_ids):
    full = readout(model, lens, input_ids, stats=("kl", "entropy"), top_k=2)
    some = readout(
        model,
        lens,
        input_ids,
        rows=[2, 0],
        positions=[0, -1],
        stats=("kl", "entropy"),
        top_k=2,
        memory_budget=1,
    )
    assert some.row_labels == ["output", "0"]
    for stat in ("kl", "entropy"):
        torch.testing.assert_close(
            some["tuned"][stat][:, 0], full["tuned"][stat][:, 2][:, [0, -1]], atol=1e-5, rtol=1e-5
        )
    pair = readout(model, lens, input_ids, rows=[(1, 0)], stats=("entropy",), top_k=0)
    residuals = collect_residuals(model, input_ids)
    expected = _direct(lens, residuals.hidden[1], 0)
    entropy = -(expected.exp() * expected).sum(-1)
    torch.testing.assert_close(pair["tuned"]["entropy"][:, 0].double(), entropy, atol=2e-5, rtol=0)
    assert pair.row_labels == ["0@1"]


def test_temperature_lenses_and_states_without_the_model(model, input_ids):
    lens = TunedLens.from_model(model, translator="lowrank", use_temperature=True)
    with torch.no_grad():
        for parameter in lens.translator.parameters():
            parameter.normal_(0, 0.3)
    residuals = collect_residuals(model, input_ids)
    result = readout(
        None, {"t": lens}, input_ids, states=residuals, stats=("entropy",), top_k=1, logprobs=True
    )
    for row in range(lens.output_row + 1):
        torch.testing.assert_close(
            result["t"].logprobs[:, row].double(),
            _direct(lens, residuals.hidden[row], row),
            atol=1e-5,
            rtol=0,
        )


def test_divergences_between_two_readouts(model, lens, input_ids):
    first = readout(model, lens, input_ids[:1], keep_inputs=True, logprobs=True)
    second = readout(model, LogitLens(model), input_ids[1:], keep_inputs=True, logprobs=True)
    got = divergences(first, second)
    p, q = first["tuned"].logprobs.double().exp(), second["logit"].logprobs.double().exp()
    m = (p + q) / 2
    kl = lambda a, b: (a * (a.log() - b.log())).sum(-1)  # noqa: E731
    torch.testing.assert_close(
        got["js"].double(), 0.5 * kl(p, m) + 0.5 * kl(q, m), atol=2e-5, rtol=0
    )
    torch.testing.assert_close(got["kl"].double(), kl(p, q), atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(got["tv"].double(), 0.5 * (p - q).abs().sum(-1), atol=2e-5, rtol=0)
    assert (got["js"] <= math.log(2) + 1e-6).all()
    with pytest.raises(ValueError, match="keep_inputs"):
        divergences(readout(model, lens, input_ids[:1]), second)


def test_bad_input_is_refused_before_any_work(model, lens, input_ids):
    with pytest.raises(IndexError, match="outside 0..2"):
        readout(model, lens, input_ids, rows=[3])
    with pytest.raises(IndexError, match="position 9 is outside the 9 tokens"):
        readout(model, lens, input_ids, positions=9)
    with pytest.raises(ValueError, match="unknown statistic 'perplexity'"):
        readout(model, lens, input_ids, stats=("perplexity",))
    with pytest.raises(ValueError, match="0..127"):
        readout(model, lens, input_ids + 1000)
    with pytest.raises(ValueError, match="attention_mask"):
        readout(model, lens, input_ids, attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="input_ids .* or states"):
        readout(model, lens)
    other = tiny_model("llama", seed=1)
    with pytest.raises(LensMismatch, match="another model's head"):
        readout(other, lens, input_ids)
    with pytest.raises(TypeError, match="not a tunedlens Lens"):
        readout(model, {"x": "lens-dir"}, input_ids)


def test_states_of_the_wrong_width_are_refused(model, lens, input_ids):
    states = [torch.zeros(2, 9, 32) for _ in range(3)]
    states[1] = torch.zeros(2, 9, 31)
    with pytest.raises(ValueError, match=r"states\[1\] has shape \(2, 9, 31\).*\(batch, seq, 32\)"):
        readout(None, lens, states=states)
    states[1] = torch.zeros(2, 8, 32)
    with pytest.raises(ValueError, match=r"states\[1\] has shape \(2, 8, 32\)"):
        readout(None, lens, states=states)
