"""Early exit, teacher-forced: the extremes of each measure, the oracle, the table, the report."""

import json
import math

import numpy as np
import pytest
import torch

from tiny_models import random_lens, tiny_model
from tunedlens import LogitLens, collect_residuals
from tunedlens.analyze import EarlyExitReport, early_exit
from tunedlens.analyze.errors import AnalysisError
from tunedlens.analyze.exit_analysis import check_early_exit_args, exit_table, summarise_exit
from tunedlens.analyze.exit_rules import MEASURES, patience_values
from tunedlens.metrics.divergence import NATS_TO_BITS


@pytest.fixture(scope="module")
def setup():
    model = tiny_model("llama")
    lens = random_lens(model)
    ids = torch.randint(3, 120, (4, 12), generator=torch.Generator().manual_seed(3))
    return model, lens, ids, exit_table(model, lens, ids)


def test_the_package_exports_the_function_even_after_its_module_is_imported():
    assert callable(early_exit) and EarlyExitReport.__name__ == "EarlyExitReport"


def test_max_prob_threshold_zero_exits_every_token_at_row_zero(setup):
    table = setup[3]
    report = summarise_exit(table, measures=["max-prob"], thresholds={"max-prob": [0.0]})
    for name, entry in report.to_dict()["lenses"].items():
        sweep = entry["measures"]["max-prob"]
        assert sweep["rows_used"] == [0.0] and sweep["exited"] == [1.0], name
        agreement = np.mean(table.lenses[name].top1[:, 0] == table.model_top1)
        assert sweep["agreement"][0] == pytest.approx(agreement)


def test_an_unreachable_threshold_never_exits_and_saves_nothing(setup):
    table = setup[3]
    n_checks = table.n_blocks  # checks at every row 0..L-1
    never = {
        "max-prob": [1.0],
        "margin": [1.0],
        "entropy": [0.0],
        "step-kl": [0.0],
        "saturation": [1.0],
        "patience": [n_checks],
    }
    metrics = summarise_exit(table, measures=list(never), thresholds=never).to_dict()
    for name, entry in metrics["lenses"].items():
        for measure, sweep in entry["measures"].items():
            assert sweep["rows_used"] == [table.n_blocks] and sweep["exited"] == [0.0]
            assert sweep["agreement"] == [1.0]
            assert sweep["kl_bits"][0] == pytest.approx(0, abs=1e-5)
            assert sweep["delta_ce_bits"][0] == pytest.approx(0, abs=1e-5)
            if MEASURES[measure].decodes:  # every failed check was paid for
                assert sweep["saved"][0] < 0, (name, measure)
            else:  # a cosine of two states is not counted
                assert sweep["saved"][0] == pytest.approx(0, abs=1e-12)


def test_savings_grow_and_agreement_falls_as_thresholds_loosen(setup):
    table = setup[3]
    thresholds = [0.99, 0.9, 0.6, 0.3, 0.0]
    metrics = summarise_exit(
        table, measures=["max-prob"], thresholds={"max-prob": thresholds}, check_rows=[1]
    ).to_dict()
    sweep = metrics["lenses"]["tuned"]["measures"]["max-prob"]
    assert sweep["rows_used"] == sorted(sweep["rows_used"], reverse=True)
    assert sweep["saved"] == sorted(sweep["saved"])
    assert metrics["check_rows"] == [1]
    assert sweep["rows_used"][-1] == 1.0  # threshold 0 exits every token at its one check


@torch.no_grad()
def test_the_table_holds_the_engines_numbers(setup):
    model, lens, ids, table = setup
    residuals = collect_residuals(model, ids)
    n = table.n_blocks
    keep = slice(0, ids.shape[1] - 1)  # the first sequence's tokens with a next token
    tokens = slice(0, ids.shape[1] - 1)
    for row in range(1, n):
        new = lens(residuals.hidden[row][0, keep], row).log_softmax(-1).double()
        old = lens(residuals.hidden[row - 1][0, keep], row - 1).log_softmax(-1).double()
        kl = (new.exp() * (new - old)).sum(-1) * NATS_TO_BITS
        np.testing.assert_allclose(
            table.lenses["tuned"].step_kl_bits[tokens, row], kl.numpy(), atol=1e-4
        )
        cosine = torch.nn.functional.cosine_similarity(
            residuals.hidden[row][0, keep].double(),
            residuals.hidden[row - 1][0, keep].double(),
            dim=-1,
        )
        np.testing.assert_allclose(table.saturation[tokens, row], cosine.numpy(), atol=1e-9)
    probs = lens(residuals.hidden[1][0, keep], 1).softmax(-1).double()
    top = probs.topk(2).values
    np.testing.assert_allclose(
        table.lenses["tuned"].margin[tokens, 1], (top[:, 0] - top[:, 1]).numpy(), atol=1e-5
    )
    np.testing.assert_array_equal(
        table.model_top1[tokens], residuals.logits[0, keep].argmax(-1).numpy()
    )
    assert (
        np.isnan(table.saturation[:, 0]).all()
        and np.isnan(table.lenses["tuned"].step_kl_bits[:, 0]).all()
    )
    assert table.n_tokens == 4 * 11 and table.calibration.sum() == 2 * 11  # sequences 0 and 2


def test_the_oracle_is_each_tokens_prediction_depth(setup):
    table = setup[3]
    metrics = summarise_exit(table, measures=["entropy"]).to_dict()
    for name, entry in metrics["lenses"].items():
        top1 = table.lenses[name].top1
        depth = []
        for token in range(table.n_tokens):
            agree = top1[token] == table.model_top1[token]
            agree[-1] = True
            depth.append(next(r for r in range(len(agree)) if agree[r:].all()))
        assert entry["oracle"]["rows_used"] == pytest.approx(np.mean(depth))
        assert entry["oracle"]["agreement"] == 1.0
        assert (
            metrics["histograms"]["lenses"][name]["oracle"]
            == np.bincount(depth, minlength=table.n_blocks + 1).tolist()
        )


def test_patience_counts_checks_with_an_unchanged_top1():
    top1 = np.array([[5, 5, 5, 7, 7, 9], [1, 2, 1, 1, 1, 1]])
    values = patience_values(top1, np.array([0, 1, 2, 3, 4]))
    assert values.tolist() == [[0, 1, 2, 0, 1], [0, 0, 0, 1, 2]]
    sparse = patience_values(top1, np.array([1, 3]))
    assert sparse[0, 3] == 0 and math.isnan(sparse[0, 0]) and sparse[1, 3] == 0


def test_the_report_certifies_thresholds_and_writes_its_files(setup, tmp_path):
    model, lens, ids, _ = setup
    report = early_exit(
        model,
        {"mine": lens},
        ids,
        measures=["max-prob", "saturation"],
        deltas=(0.3,),
        bound="hoeffding",
    )
    metrics = report.to_dict()
    assert set(metrics["lenses"]) == {"logit", "mine"}
    calibration = metrics["calibration"]
    assert calibration["bound"] == "hoeffding" and calibration["calibration_tokens"] == 22
    for name in ("logit", "mine"):
        for measure in ("max-prob", "saturation"):
            result = calibration["results"][name][measure]["0.3"]
            assert result["certified"] and result["upper_bound"] <= 0.3
            assert result["calibration_agreement"] >= 0.7
    paths = report.save(tmp_path)
    names = {p.name for p in paths}
    assert {
        "early_exit.json",
        "early_exit.md",
        "early_exit_sweep.csv",
        "early_exit_calibration.csv",
        "early_exit_oracle.csv",
        "early_exit_rows.csv",
        "early_exit_tradeoff.png",
        "early_exit_tradeoff.html",
        "early_exit_rows.png",
    } <= names
    loaded = json.loads((tmp_path / "early_exit.json").read_text())
    assert loaded["lenses"]["mine"]["measures"]["max-prob"]["thresholds"] == list(
        MEASURES["max-prob"].sweep
    )
    sweep_lines = (tmp_path / "early_exit_sweep.csv").read_text().splitlines()
    assert len(sweep_lines) == 1 + 2 * (
        len(MEASURES["max-prob"].sweep) + len(MEASURES["saturation"].sweep)
    )
    assert "## mine" in (tmp_path / "early_exit.md").read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(thresholds={"max-prob": [1.5]}), "max-prob threshold 1.5 is outside its range"),
        (dict(thresholds={"saturation": [-2]}), "saturation threshold -2 is outside"),
        (dict(thresholds={"patience": [1.5]}), "patience threshold 1.5 is outside"),
        (dict(thresholds={"entropy": [-0.1]}), "entropy threshold -0.1 is outside"),
        (dict(measures=["max-prob"], thresholds={"entropy": [1.0]}), "not among the measures"),
        (dict(measures=["confidence"]), "unknown measure 'confidence'"),
        (dict(check_every=0), "check_every must be a positive integer"),
        (dict(deltas=(0.0,)), "δ"),
        (dict(epsilon=1.0), "ε"),
        (dict(generate=4), "generate needs the model's tokenizer"),
    ],
)
def test_bad_arguments_are_refused_before_any_model_work(options, message):
    ids = torch.randint(3, 120, (2, 8))
    with pytest.raises(AnalysisError, match=message):
        early_exit(None, None, ids, **options)  # no model: nothing may run before the check


@pytest.mark.parametrize("shape", [(1, 1), (0, 5), (3, 1)])
def test_data_shorter_than_one_sequence_is_refused(shape):
    with pytest.raises(AnalysisError, match="shorter than one sequence"):
        check_early_exit_args(torch.zeros(shape, dtype=torch.long))


def test_check_rows_beyond_the_model_are_refused_before_the_readout(setup):
    model, lens, ids, _ = setup
    with pytest.raises(AnalysisError, match=r"check_rows \[2\] are outside 0..1"):
        early_exit(model, lens, ids, check_rows=[0, 2])


def test_lenses_of_mid_points_are_refused(setup):
    model, _, ids, _ = setup
    with pytest.raises(AnalysisError, match="reads mid points"):
        exit_table(model, {"mid": LogitLens(model, points="mid")}, ids)


def test_generation_through_the_report_compares_with_the_full_model(
    setup, tiny_tokenizer, tmp_path
):
    model, lens, ids, _ = setup
    report = early_exit(
        model,
        lens,
        ids,
        measures=["max-prob"],
        deltas=(0.3,),
        bound="hoeffding",
        generate=3,
        tokenizer=tiny_tokenizer,
        n_prompts=2,
        prompt_tokens=4,
    )
    generation = report.to_dict()["generation"]
    assert generation["new_tokens"] == 3 and len(generation["prompts"]) == 2
    assert generation["full"]["driver_identical"] == 1.0  # the driver without exit is the model
    assert {(run["lens"], run["measure"]) for run in generation["runs"]} == {
        ("logit", "max-prob"),
        ("tuned", "max-prob"),
    }
    for run in generation["runs"]:
        assert run["tokens_per_s"] > 0 and len(run["first_difference"]) == 2
        assert (
            run["threshold"]
            == report.to_dict()["calibration"]["results"][run["lens"]]["max-prob"]["0.3"][
                "threshold"
            ]
        )
    report.save(tmp_path, plots=False)
    assert "Greedy generation" in (tmp_path / "early_exit.md").read_text()
    assert (tmp_path / "early_exit_generation.csv").read_text().count("\n") == 3
