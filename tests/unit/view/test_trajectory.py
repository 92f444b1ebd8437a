"""Trajectory statistics against their definitions, views, batches and bad input."""

import math

import numpy as np
import pytest
import torch

from tiny_models import tiny_config
from tunedlens import LogitLens, PredictionTrajectory, collect_residuals, predict_layers
from tunedlens.view.trajectory import TrajectoryStat


def _trajectory(lens, model, ids, **kwargs):
    return PredictionTrajectory.from_lens_and_model(lens, model, ids, keep_logprobs=True, **kwargs)


def test_rows_are_the_lens_then_the_model(model, lens, input_ids):
    trajectory = _trajectory(lens, model, input_ids[0])
    residuals = collect_residuals(model, input_ids[:1])
    assert trajectory.row_labels == ["0", "1", "output"] and trajectory.rows == [0, 1, 2]
    for row in range(lens.output_row):
        expected = lens(residuals.hidden[row], row).log_softmax(-1)
        torch.testing.assert_close(trajectory.logprobs[:, row], expected)
    torch.testing.assert_close(trajectory.logprobs[:, -1], residuals.logits.log_softmax(-1))
    kl = trajectory.kl_to_model()
    assert (
        kl.units == "bits" and np.all(kl.values >= 0) and np.allclose(kl.values[-1], 0, atol=1e-5)
    )


def test_js_and_tv_follow_their_definitions(model, lens, input_ids):
    first = _trajectory(lens, model, input_ids[0])
    second = _trajectory(LogitLens(model), model, input_ids[1])
    p, q = first.logprobs.double().exp(), second.logprobs.double().exp()
    m = (p + q) / 2
    kl = lambda a, b: (a * (a.log() - b.log())).sum(-1)  # noqa: E731
    js = (0.5 * kl(p, m) + 0.5 * kl(q, m)) / math.log(2)
    tv = 0.5 * (p - q).abs().sum(-1)
    np.testing.assert_allclose(first.js_divergence(second).values, js[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(first.total_variation(second).values, tv[0].numpy(), atol=1e-5)
    # Symmetric, bounded by 1, zero on identical inputs; TV is not the L-infinity distance.
    np.testing.assert_allclose(second.js_divergence(first).values, js[0].numpy(), atol=1e-5)
    assert first.js_divergence(second).values.max() <= 1 + 1e-9
    assert np.allclose(first.js_divergence(first).values, 0, atol=1e-6)
    assert not np.allclose(first.total_variation(second).values, (p - q).abs().amax(-1)[0].numpy())


def test_target_statistics_follow_their_definitions(model, lens, input_ids):
    targets = input_ids[0].roll(1)
    targets[3] = -1  # no target there
    anti = input_ids[0].flip(0)
    trajectory = _trajectory(lens, model, input_ids[0], targets=targets, anti_targets=anti)
    logprobs = trajectory.logprobs[0].double()  # (rows, seq, vocab)
    target_lp = logprobs[:, torch.arange(9), targets.clamp_min(0)]
    ranks = 1 + (logprobs > target_lp[..., None]).sum(-1)
    got = trajectory.rank().values
    assert np.isnan(got[:, 3]).all()
    keep = [s for s in range(9) if s != 3]
    np.testing.assert_array_equal(got[:, keep], ranks[:, keep].numpy())
    ce = trajectory.cross_entropy().values
    np.testing.assert_allclose(ce[:, keep], -target_lp[:, keep].numpy() / math.log(2), atol=1e-5)
    diff = trajectory.log_prob_diff().values
    anti_lp = logprobs[:, torch.arange(9), anti]
    np.testing.assert_allclose(diff[:, keep], (target_lp - anti_lp)[:, keep].numpy(), atol=1e-5)
    delta = trajectory.log_prob_diff(delta=True).values
    np.testing.assert_allclose(delta[1:, keep], np.diff(diff, axis=0)[:, keep], atol=1e-5)
    probs = logprobs.exp()
    np.testing.assert_allclose(
        trajectory.max_probability().values, probs.amax(-1).numpy(), atol=1e-6
    )
    entropy = -(probs * logprobs).sum(-1) / math.log(2)
    np.testing.assert_allclose(trajectory.entropy().values, entropy.numpy(), atol=1e-5)


def test_views_batches_and_clipping(model, lens, input_ids, tiny_tokenizer):
    trajectory = _trajectory(lens, model, input_ids, tokenizer=tiny_tokenizer)
    assert trajectory.logprobs.shape[:3] == (2, 3, 9)
    last = trajectory.slice_positions(slice(-4, None))
    assert last.input_ids.shape == (2, 4) and last.targets.shape == (2, 4)
    assert trajectory.stride(5).row_labels == [
        "0",
        "1",
        "output",
    ]  # last block and output always kept
    entropy = trajectory.entropy()
    singles = [_trajectory(lens, model, ids).entropy().values for ids in input_ids]
    np.testing.assert_allclose(entropy.values, (singles[0] + singles[1]) / 2, atol=1e-5)
    labels = trajectory.top_tokens()
    top = trajectory.logprobs.argmax(-1)
    for r in range(3):
        for s in range(9):
            assert (labels[r][s] == "*") == bool(top[0, r, s] != top[1, r, s])
    clipped = entropy.clip(0.0, 1.0)
    assert clipped.values.max() <= 1.0 and clipped.vmax == 1.0
    assert isinstance(clipped, TrajectoryStat)


@pytest.mark.parametrize("points", ["block", "both"])
def test_predictions_are_predict_layers_rows(model, lens, tiny_tokenizer, points):
    chosen = lens if points == "block" else LogitLens(model, points="both")
    prompt = "w5 w17 w3 w99"
    ids = tiny_tokenizer(prompt, return_tensors="pt").input_ids[0]
    trajectory = _trajectory(chosen, model, ids, tokenizer=tiny_tokenizer)
    for position in (0, 2, -1):
        mine = trajectory.predictions(position, top_k=3)
        theirs = predict_layers(model, tiny_tokenizer, prompt, chosen, top_k=3, position=position)
        assert [row.label for row in mine] == [row.label for row in theirs] == trajectory.row_labels
        assert [row.row for row in mine] == trajectory.rows
        for a, b in zip(mine, theirs, strict=True):
            assert [(t.token, t.id) for t in a.top] == [(t.token, t.id) for t in b.top]
            assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], abs=1e-6)
    last_two = trajectory.slice_positions(slice(-2, None))
    assert last_two.predictions(0) == trajectory.predictions(2)
    with pytest.raises(ValueError, match="kept 5 tokens"):
        trajectory.predictions(top_k=6)
    with pytest.raises(IndexError, match="prompt must be in 0..0"):
        trajectory.predictions(prompt=1)
    with pytest.raises(IndexError, match="outside the prompt's 4 tokens"):
        trajectory.predictions(4)
    with pytest.raises(ValueError, match="no tokenizer"):
        _trajectory(chosen, model, ids).predictions()


@pytest.mark.parametrize(
    ("points", "step", "rows", "labels"),
    [
        ("block", 2, [0, 2, 4, 5], ["0", "2", "4", "output"]),
        ("block", 3, [0, 3, 4, 5], ["0", "3", "4", "output"]),
        ("mid", 2, [0, 2, 4, 5], ["0.mid", "2.mid", "4.mid", "output"]),
        ("both", 3, [0, 1, 6, 7, 8, 9, 10], ["0", "0.mid", "3", "3.mid", "4", "4.mid", "output"]),
    ],
)
def test_stride_keeps_every_step_th_block_at_any_points(input_ids, points, step, rows, labels):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("llama", num_hidden_layers=5)).eval()
    trajectory = _trajectory(LogitLens(model, points=points), model, input_ids[0])
    assert trajectory.n_blocks == 5 and trajectory.rows == list(range(trajectory.output_row + 1))
    strided = trajectory.stride(step)
    assert strided.rows == rows and strided.row_labels == labels
    torch.testing.assert_close(strided.logprobs, trajectory.logprobs[:, rows])
    assert strided.entropy().row_labels == labels


def test_bad_input(model, lens, input_ids):
    with pytest.raises(ValueError, match="not empty"):
        _trajectory(lens, model, torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="one token per position"):
        _trajectory(lens, model, input_ids[0], targets=input_ids[0, :3])
    trajectory = _trajectory(lens, model, input_ids[0])
    with pytest.raises(ValueError, match="unknown statistic 'perplexity'"):
        trajectory.stat("perplexity")
    with pytest.raises(ValueError, match="anti_targets"):
        trajectory.log_prob_diff()
    with pytest.raises(ValueError, match="same token length"):
        trajectory.js_divergence(_trajectory(lens, model, input_ids[0, :4]))


@pytest.mark.parametrize("component", ["resid_pre", "resid_post"])
def test_from_a_transformerlens_style_cache(model, lens, input_ids, component):
    residuals = collect_residuals(model, input_ids)
    shift = 1 if component == "resid_post" else 0
    cache = {f"blocks.{i}.hook_{component}": residuals.hidden[i + shift] for i in range(2)}
    cache["blocks.1.hook_resid_post"] = residuals.hidden[2]  # the output row's state
    from_cache = PredictionTrajectory.from_lens_and_cache(
        lens, cache, input_ids, residuals.logits, residual_component=component, keep_logprobs=True
    )
    direct = _trajectory(lens, model, input_ids)
    if component == "resid_pre":
        torch.testing.assert_close(from_cache.logprobs, direct.logprobs)
    else:  # resid_post of block 0 is hidden_states[1], read with translator 1
        torch.testing.assert_close(from_cache.logprobs[:, 0], direct.logprobs[:, 1])
        assert from_cache.row_labels == ["1", "2", "output"] and from_cache.rows == [1, 2, 2]
    with pytest.raises(ValueError, match="one model"):  # logits of another model are caught
        PredictionTrajectory.from_lens_and_cache(
            lens, cache, input_ids, residuals.logits + 1.0, residual_component=component
        )
    with pytest.raises(KeyError, match="blocks.0.hook_resid_mid"):
        PredictionTrajectory.from_lens_and_cache(
            lens, cache, input_ids, residuals.logits, residual_component="resid_mid"
        )


def test_difference_view_labels_both_tokens(model, lens, input_ids, tiny_tokenizer):
    first = _trajectory(lens, model, input_ids[0], tokenizer=tiny_tokenizer)
    second = _trajectory(lens, model, input_ids[1], tokenizer=tiny_tokenizer)
    view = first.difference(second)
    np.testing.assert_allclose(view.values, first.js_divergence(second).values)
    a, b = first.top_tokens(), second.top_tokens()
    for r, row in enumerate(view.cell_labels):
        for s, label in enumerate(row):
            assert label == (a[r][s] if a[r][s] == b[r][s] else f"{a[r][s]}/{b[r][s]}")
