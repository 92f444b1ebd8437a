"""Prompt suites, KPIs and gates A–D."""

import json
from collections import Counter

import pytest
import torch

from tiny_models import tiny_model
from tunedlens import TunedLens, evaluate, load_prompts
from tunedlens.evaluation import PromptSuiteError
from tunedlens.evaluation.prompts import encode_suite
from tunedlens.evaluation.suite import compare_kpis, depth_row, fit_temperature, gates_for


def test_the_built_in_suite_covers_five_domains():
    suite = load_prompts()
    assert len(suite.prompts) >= 40
    counts = Counter(p.category for p in suite.prompts)
    assert set(counts) == {"geography", "science", "language", "arithmetic", "code"}
    assert min(counts.values()) >= 6


def test_bad_suite_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(PromptSuiteError, match="holds no prompts"):
        load_prompts(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "answer": " b"}\n{"prompt": "a"}\n')
    with pytest.raises(PromptSuiteError, match="line 2"):
        load_prompts(broken)
    with pytest.raises(PromptSuiteError, match="cannot read"):
        load_prompts(tmp_path / "missing.jsonl")


def test_multi_token_answers_are_skipped_and_counted(tmp_path, tiny_tokenizer):
    path = tmp_path / "suite.jsonl"
    path.write_text('{"prompt": "w1 w2", "answer": " w3"}\n{"prompt": "w1", "answer": " w2 w3"}\n')
    encoded = encode_suite(load_prompts(path), tiny_tokenizer)
    assert [e.answer_id for e in encoded.usable] == [tiny_tokenizer.convert_tokens_to_ids("w3")]
    assert len(encoded.skipped) == 1 and "2 tokens" in encoded.skipped[0]["reason"]


def _kpis(kl_rows, first_10, first_5, temp_kl=0.0):
    return {
        "answer_kl_bits": kl_rows,
        "first_layer": {
            "rank_le_10": first_10,
            "rank_le_5": first_5,
            "rank_le_1": first_5,
            "kl_le_1.0": first_5,
            "kl_le_0.5": first_5,
        },
        "rank1_share": [0.5] * len(kl_rows),
        "kl_after_temp_bits": temp_kl,
    }


def test_gates_flip_on_constructed_cases():
    output_row = 8
    rows = [depth_row(p, output_row) for p in (25, 50, 75)]
    assert rows == [2, 4, 6]
    baseline = _kpis([[5.0] * 9] * 5, [8] * 5, [8] * 5)
    good = _kpis([[4.0] * 9] * 5, [2] * 5, [5] * 5)
    lens = {**good, **compare_kpis(baseline, good, output_row)}
    gates = gates_for(lens)
    assert all(gate["pass"] for gate in gates.values()), gates
    # ΔKL of 0.25 bits passes A at 25 % (0.2) but not at 50 % (0.3).
    small = _kpis([[4.75] * 9] * 5, [2] * 5, [5] * 5)
    assert not gates_for({**small, **compare_kpis(baseline, small, output_row)})["A"]["pass"]
    # Worse than the logit lens by 0.2 bits: D fails.
    worse = _kpis([[5.2] * 9] * 5, [2] * 5, [5] * 5)
    result = gates_for({**worse, **compare_kpis(baseline, worse, output_row)})
    assert not result["D"]["pass"] and result["D"]["worst_delta_kl_bits"] == pytest.approx(-0.2)
    # Earlier by 4 layers on 3 of 5 prompts (60 %) passes B; on 2 of 5 it fails.
    edge = _kpis([[4.0] * 9] * 5, [4, 4, 4, 8, 8], [6] * 5)
    assert gates_for({**edge, **compare_kpis(baseline, edge, output_row)})["B"]["pass"]
    late = _kpis([[4.0] * 9] * 5, [4, 4, 8, 8, 8], [6] * 5)
    assert not gates_for({**late, **compare_kpis(baseline, late, output_row)})["B"]["pass"]
    miscalibrated = _kpis([[4.0] * 9] * 5, [2] * 5, [5] * 5, temp_kl=0.06)
    assert not gates_for({**miscalibrated, **compare_kpis(baseline, miscalibrated, output_row)})[
        "C"
    ]["pass"]


def test_temperature_fit_recovers_a_scaled_copy():
    logits = torch.randn(6, 50) * 3
    target = logits.log_softmax(-1)
    temperature, kl = fit_temperature(target, logits * 2.5)
    assert temperature == pytest.approx(2.5, rel=1e-3)
    assert kl < 1e-6


def test_suite_end_to_end_on_a_tiny_model(tmp_path, tiny_tokenizer):
    model = tiny_model("llama")
    with torch.no_grad():  # per-dimension gains: skipping the norm is then more than a scale
        model.model.norm.weight.uniform_(0.2, 3.0)
    path = tmp_path / "suite.jsonl"
    lines = [
        json.dumps({"prompt": f"w{i} w{i + 1} w{i + 2}", "answer": f" w{i + 3}"}) for i in range(6)
    ]
    path.write_text("\n".join([*lines, '{"prompt": "w1", "answer": " w2 w3"}']))
    tokens = torch.randint(3, 120, (2, 10), generator=torch.Generator().manual_seed(0))
    untrained = TunedLens.from_model(model)
    skipped_norm = TunedLens.from_model(model, skip_norm=True)
    report = evaluate(
        model,
        {"same": untrained, "no-norm": skipped_norm},
        tokens,
        tokenizer=tiny_tokenizer,
        prompts=load_prompts(path),
        bootstrap=0,
    )
    metrics = report.metrics
    assert metrics["prompts"]["used"] == 6 and metrics["prompts"]["skipped_count"] == 1
    same = metrics["gates"]["same"]
    # The untrained lens is the logit lens: no gain (A, B fail), no loss (D passes), exact (C).
    assert not same["A"]["pass"] and not same["B"]["pass"]
    assert same["C"]["pass"] and same["D"]["pass"]
    assert metrics["kpis"]["same"]["kl_after_temp_bits"] < 1e-6
    # Decoding the output row without the final norm is not the model: gate C fails.
    assert not metrics["gates"]["no-norm"]["C"]["pass"]
    n_rows = model.config.num_hidden_layers + 1
    assert len(report.next_token) == 3 * 6 * n_rows
    assert len(report.records) == 3 * 6 * n_rows * 3  # lenses x prompts x rows x positions
    assert {row["lens"] for row in report.records} == {"logit", "same", "no-norm"}


def test_gate_c_compares_with_the_model_forward_pass(tmp_path, tiny_tokenizer):
    """Gate C fails when the head the lenses decode with is not the model's (here: the model's
    forward pass scales its logits per vocabulary entry, which no lens reproduces)."""
    model = tiny_model("llama")
    gains = torch.linspace(0.2, 3.0, model.config.vocab_size)
    model.lm_head.register_forward_hook(lambda module, args, output: output * gains)
    path = tmp_path / "suite.jsonl"
    path.write_text(
        "\n".join(
            json.dumps({"prompt": f"w{i} w{i + 1}", "answer": f" w{i + 2}"}) for i in range(4)
        )
    )
    tokens = torch.randint(3, 120, (1, 8), generator=torch.Generator().manual_seed(0))
    report = evaluate(
        model,
        {"same": TunedLens.from_model(model)},
        tokens,
        tokenizer=tiny_tokenizer,
        prompts=load_prompts(path),
        bootstrap=0,
    )
    gate = report.metrics["gates"]["same"]["C"]
    assert not gate["pass"] and gate["kl_after_temp_bits"] > 0.05


def test_gate_e_names_the_rows_where_a_lens_is_worse_than_the_logit_lens():
    from tunedlens.evaluation.core import add_versus_logit

    metrics = {
        "layers": [0, 1, 2, 3, 4],
        "row_labels": ["0", "1", "2", "3", "output"],
        "output_row": 4,
        "lenses": {
            "logit": {"top1_agree": [0.2, 0.4, 0.6, 0.8, 1.0], "kl_bits": [5, 4, 3, 2, 0]},
            "good": {"top1_agree": [0.3, 0.5, 0.6, 0.8, 1.0], "kl_bits": [3, 2, 1, 1, 0]},
            # Lower top-1 at rows 2 and 3 (beyond 0.01), higher KL at row 3 (beyond 5 %).
            "bad": {"top1_agree": [0.3, 0.395, 0.5, 0.7, 1.0], "kl_bits": [3, 2, 3.1, 2.5, 0]},
        },
    }
    add_versus_logit(metrics)
    assert metrics["gates"]["good"]["E"]["pass"]
    bad = metrics["gates"]["bad"]["E"]
    assert not bad["pass"]
    assert bad["rows_worse_top1"] == ["2", "3"] and bad["rows_worse_kl"] == ["3"]
    assert bad["largest_top1_drop"] == pytest.approx(0.1) and bad["at_row"] in ("2", "3")
    assert metrics["warnings"] == [
        "bad is worse than the logit lens on these tokens: lower top-1 agreement at rows 2–3; "
        "higher KL at row 3"
    ]
