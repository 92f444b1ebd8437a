"""evaluate(): per-layer metrics against a direct computation, intervals, bad input."""

import pytest
import torch

from tiny_models import tiny_model
from tunedlens import LensMismatch, LogitLens, TunedLens, collect_residuals, evaluate
from tunedlens.metrics.divergence import NATS_TO_BITS


@pytest.fixture
def tokens():
    return torch.randint(3, 120, (5, 12), generator=torch.Generator().manual_seed(3))


def test_metrics_equal_a_direct_computation(model, lens, tokens, tiny_tokenizer):
    report = evaluate(
        model,
        {"mine": lens},
        tokens,
        tokenizer=tiny_tokenizer,
        bootstrap=200,
        memory_budget=12 * 4 * 128 * 3,
    )
    metrics = report.to_dict()
    output_row = lens.output_row
    assert metrics["layers"] == list(range(output_row + 1))
    residuals = collect_residuals(model, tokens)
    model_lp = residuals.logits.double().log_softmax(-1)
    targets = tokens[:, 1:]
    for name, chosen in (("logit", LogitLens(model)), ("mine", lens)):
        entry = metrics["lenses"][name]
        for layer in range(output_row + 1):
            with torch.no_grad():
                lp = chosen(residuals.hidden[layer], layer).double().log_softmax(-1)
            kl = (model_lp.exp() * (model_lp - lp)).sum(-1).mean() * NATS_TO_BITS
            ce = -lp[:, :-1].gather(-1, targets[..., None]).mean() * NATS_TO_BITS
            entropy = -(lp.exp() * lp).sum(-1).mean() * NATS_TO_BITS
            top1 = (lp.argmax(-1) == model_lp.argmax(-1)).double().mean()
            assert entry["kl_bits"][layer] == pytest.approx(float(kl), abs=1e-4)
            assert entry["ce_bits"][layer] == pytest.approx(float(ce), abs=1e-4)
            assert entry["entropy_bits"][layer] == pytest.approx(float(entropy), abs=1e-4)
            assert entry["top1_agree"][layer] == pytest.approx(float(top1), abs=1e-9)
            low, high = entry["kl_bits_ci95"][layer]
            assert low <= entry["kl_bits"][layer] + 1e-9 and entry["kl_bits"][layer] <= high + 1e-9
        assert entry["top5_agree"][-1] == 1.0 or name == "mine"
    logit = metrics["lenses"]["logit"]
    assert abs(logit["kl_bits"][output_row]) < 1e-5  # the output row is the model itself
    assert logit["top1_agree"][output_row] == 1.0 and logit["mean_rank"][output_row] == 1.0
    assert metrics["baseline"]["ce_bits"] == pytest.approx(logit["ce_bits"][output_row], abs=1e-5)
    assert all(value >= 0 for e in metrics["lenses"].values() for value in e["kl_bits"])
    assert metrics["baseline"]["bits_per_byte"] > 0


def test_untrained_lens_scores_like_the_logit_lens(model, tokens):
    metrics = evaluate(model, [TunedLens.from_model(model)], tokens, bootstrap=0).to_dict()
    assert metrics["lenses"]["tuned"]["kl_bits"] == pytest.approx(
        metrics["lenses"]["logit"]["kl_bits"]
    )
    assert metrics["lenses"]["tuned"]["kl_bits_ci95"] is None


def test_layer_subset_and_transfer(model, lens, tokens):
    metrics = evaluate(
        model, {"mine": lens}, tokens, layers=[1], transfer=True, bootstrap=0
    ).metrics
    full = evaluate(model, {"mine": lens}, tokens, bootstrap=0).metrics
    assert metrics["layers"] == [1]
    assert metrics["lenses"]["mine"]["kl_bits"] == pytest.approx(
        [full["lenses"]["mine"]["kl_bits"][1]]
    )
    transfer = metrics["lenses"]["mine"]["transfer_kl_bits"]
    for layer in range(lens.output_row):  # translator i on its own layer i is the plain lens
        assert transfer[layer][layer] == pytest.approx(
            full["lenses"]["mine"]["kl_bits"][layer], abs=1e-5
        )


def test_bad_input_is_refused(model, tokens):
    other = tiny_model("llama", seed=5)
    with pytest.raises(LensMismatch, match="another model"):
        evaluate(model, [TunedLens.from_model(other)], tokens)
    with pytest.raises(ValueError, match="n_sequences"):
        evaluate(model, None, tokens[:, :1])
    with pytest.raises(ValueError, match="reserved"):
        evaluate(model, {"logit": TunedLens.from_model(model)}, tokens)
    with pytest.raises(IndexError, match="outside"):
        evaluate(model, None, tokens, layers=[7])


def test_bad_api_input_says_what_to_pass(model, lens, input_ids):
    with pytest.raises(TypeError, match="lenses must be a Lens, a list of lenses .* got str"):
        evaluate(model, "path/to/lens", input_ids, bootstrap=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        evaluate(model, lens, input_ids, batch_size=0, bootstrap=0)


def test_reports_name_rows_and_read_reports_written_before(model, tokens):
    from tunedlens.evaluation.report import row_labels, summary_markdown

    lens = TunedLens.from_model(model, points="both")
    metrics = evaluate(model, {"mine": lens}, tokens, layers=[0, 3, 4], bootstrap=0).metrics
    assert metrics["n_blocks"] == 2 and metrics["output_row"] == 4 and "n_layers" not in metrics
    assert metrics["layers"] == [0, 3, 4] and metrics["row_labels"] == ["0", "1.mid", "output"]
    assert "| 1.mid |" in summary_markdown(metrics) and "| output |" in summary_markdown(metrics)
    # A block report as written before rows had labels: n_layers (the output row), no labels.
    block = evaluate(model, {"mine": TunedLens.from_model(model)}, tokens, bootstrap=0).metrics
    old = {k: v for k, v in block.items() if k not in ("n_blocks", "row_labels", "points")}
    old["n_layers"] = block["output_row"]
    assert row_labels(old) == block["row_labels"] == ["0", "1", "output"]
    assert summary_markdown(old) == summary_markdown(block)
