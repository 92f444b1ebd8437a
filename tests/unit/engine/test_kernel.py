"""The blocked kernel against a direct float64 computation, on every kind of head."""

import pytest
import torch

from tiny_models import random_lens, tiny_model
from tunedlens import LogitLens, collect_residuals
from tunedlens.engine.kernel import BlockedHead, head_input

# llama: plain head; phi: head with a bias; opt: projection before the head; cohere: logit scale;
# gemma2: soft-capped (non-linear) head.
FAMILIES = ["llama", "phi", "opt", "cohere", "gemma2"]


def _direct(lens_logits, model_logits, next_ids):
    lq, lp = lens_logits.double().log_softmax(-1), model_logits.double().log_softmax(-1)
    top = model_logits.argmax(-1)
    top_logit = lens_logits.gather(-1, top[:, None])
    threshold = top_logit + 1e-6 * top_logit.abs().clamp_min(1.0)
    zc = lens_logits.double() - lens_logits.double().mean(-1, keepdim=True)
    fc = model_logits.double() - model_logits.double().mean(-1, keepdim=True)
    has_next = next_ids >= 0
    return {
        "kl": (lp.exp() * (lp - lq)).sum(-1),
        "entropy": -(lq.exp() * lq).sum(-1),
        "ce": torch.where(has_next, -lq.gather(-1, next_ids.clamp_min(0)[:, None])[:, 0], 0.0),
        "rank": 1 + (lens_logits > threshold).sum(-1).double(),
        "top1": (lens_logits.argmax(-1) == top).double(),
        "confidence": lq.exp().amax(-1),
        "cos": torch.nn.functional.cosine_similarity(zc, fc, dim=-1),
    }


def _check_against_direct(model, lens, ids, head, layers=None):
    """Stats of ``lens`` at ``layers`` (default: all rows) against ``_direct``; returns the rest."""
    residuals = collect_residuals(model, ids)
    output_row = lens.output_row
    hidden = [h.flatten(0, 1) for h in residuals.hidden]
    model_logits = residuals.logits.flatten(0, 1).float()
    next_ids = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], -1)], 1).flatten()
    final_inputs, _ = head_input(LogitLens(model), hidden[output_row], output_row)
    final = head.final(final_inputs, next_ids)
    assert torch.equal(final.top, model_logits.argmax(-1))
    for layer in range(output_row + 1) if layers is None else layers:
        inputs, scale = head_input(lens, hidden[layer], layer)
        stats = head.stats(inputs, final, scale)
        with torch.no_grad():
            expected = _direct(lens(hidden[layer], layer), model_logits, next_ids)
        for name, value in expected.items():
            torch.testing.assert_close(stats[name].double(), value, atol=2e-5, rtol=1e-5, msg=name)
    return hidden, final, model_logits


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("block_rows", [16, 4096])
def test_stats_match_a_direct_computation(model_type, block_rows, input_ids):
    model = tiny_model(model_type)
    lens = random_lens(model)
    head = BlockedHead(LogitLens(model).unembed, block_rows=block_rows)
    hidden, final, _ = _check_against_direct(model, lens, input_ids, head)
    # The output row of the logit lens is the model itself.
    output_row = lens.output_row
    inputs, scale = head_input(LogitLens(model), hidden[output_row], output_row)
    stats = head.stats(inputs, final, scale)
    assert stats["kl"].abs().max() < 1e-5
    assert stats["top1"].min() == 1 and stats["rank"].max() == 1


def test_final_matches_the_model(input_ids):
    model = tiny_model("llama")
    residuals = collect_residuals(model, input_ids)
    logits = residuals.logits.flatten(0, 1).double()
    next_ids = input_ids.flatten().roll(-1)
    head = BlockedHead(LogitLens(model).unembed)
    output_row = LogitLens(model).output_row
    inputs, _ = head_input(LogitLens(model), residuals.hidden[output_row].flatten(0, 1), output_row)
    final = head.final(inputs, next_ids)
    logprobs = logits.log_softmax(-1)
    torch.testing.assert_close(final.probs.double(), logprobs.exp(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        final.entropy, -(logprobs.exp() * logprobs).sum(-1), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        final.cross_entropy, -logprobs.gather(-1, next_ids[:, None])[:, 0], atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("model_type", ["llama", "phi", "gemma2"])
def test_layer_kl_uses_the_kernel_and_matches_a_direct_computation(model_type):
    from tunedlens.engine import layer_kl
    from tunedlens.metrics import kl_divergence

    model = tiny_model(model_type)
    lens = random_lens(model)
    ids = torch.randint(3, 120, (3, 10), generator=torch.Generator().manual_seed(2))
    got = layer_kl(lens, model, ids, batch_size=2, chunk_rows=7)
    residuals = collect_residuals(model, ids)
    with torch.no_grad():
        target = lens(residuals.hidden[-1], 2).double().log_softmax(-1)
        expected = torch.stack(
            [
                kl_divergence(target, lens(residuals.hidden[i], i).double().log_softmax(-1)).mean()
                for i in range(2)
            ]
        )
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("model_type", ["llama", "phi", "gemma2"])
@pytest.mark.parametrize("matmul", ["torch", "numpy"])
def test_worker_threads_and_both_matmul_libraries_match_a_direct_computation(model_type, matmul):
    if matmul == "numpy":
        pytest.importorskip("threadpoolctl")
    model = tiny_model(model_type)
    lens = random_lens(model)
    ids = torch.randint(3, 120, (4, 40), generator=torch.Generator().manual_seed(3))
    # 160 positions on 3 workers: unequal shares; blocks of 48 rows leave a short last block.
    head = BlockedHead(LogitLens(model).unembed, block_rows=48, matmul=matmul, workers=3)
    threads = torch.get_num_threads()
    _, final, model_logits = _check_against_direct(model, lens, ids, head, (0, lens.output_row))
    torch.testing.assert_close(
        final.probs.double(), model_logits.double().softmax(-1), atol=1e-6, rtol=1e-5
    )
    assert torch.get_num_threads() == threads  # the workers' single-threading is undone


def test_weight_moments_are_computed_once_per_model_and_die_with_it():
    import gc

    from tunedlens.engine import kernel

    model = tiny_model("llama")
    linear = LogitLens(model).unembed.unembedding
    first = kernel.weight_moments(linear)
    assert kernel.weight_moments(linear) is first  # cached
    gram = linear.weight.detach().double().T @ linear.weight.detach().double()
    torch.testing.assert_close(first[0], gram)
    assert not any(name.startswith("_tunedlens") for name in vars(linear))  # nothing stuck on it
    count = len(kernel._MOMENTS)
    del model, linear
    gc.collect()
    assert len(kernel._MOMENTS) == count - 1
