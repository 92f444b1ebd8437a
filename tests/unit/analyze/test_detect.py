"""detect(): end to end on a tiny model, features against a direct computation, bad input first."""

import csv
import json
import math
import sys

import numpy as np
import pytest
import torch

from tunedlens import LensMismatch, LogitLens, collect_residuals
from tunedlens.analyze.detection import DetectReport, check_detect_args, detect, load_task
from tunedlens.analyze.detection.analysis import attack_success, score_task
from tunedlens.analyze.detection.features import Readings, encode_task, feature_matrix, read_task
from tunedlens.analyze.errors import AnalysisError
from tunedlens.outputs import OutputError

pytest.importorskip("sklearn")


def _task_file(path, *, anomalies_change=True, n=24, seed=0):
    """Normal prompts of tiny words; anomalies append other words; a 'filler' control."""
    rng = np.random.default_rng(seed)
    lines = []
    for index in range(n):
        body = " ".join(f"w{i}" for i in rng.integers(10, 60, rng.integers(6, 10)))
        label = " w5" if index % 2 else " w6"
        common = {"choices": [" w5", " w6"], "label": label}
        lines.append({"prompt": body, "anomalous": False, **common})
        if index % 2 == 0:
            extra = " ".join(f"w{i}" for i in rng.integers(100, 124, 5)) if anomalies_change else ""
            lines.append({"prompt": f"{body} {extra}".strip(), "anomalous": True, **common})
            filler = " ".join(f"w{i}" for i in rng.integers(10, 60, 5))
            lines.append(
                {"prompt": f"{body} {filler}", "anomalous": False, "kind": "filler", **common}
            )
    path.write_text("\n".join(json.dumps(line) for line in lines))
    return path


@pytest.fixture
def task_file(tmp_path):
    return _task_file(tmp_path / "words.jsonl")


def test_the_package_exports_the_function_even_after_its_module_is_imported():
    import tunedlens.analyze as analyze
    import tunedlens.analyze.detection as module

    assert module.detect is detect
    assert analyze.detect is detect and analyze.DetectReport is DetectReport
    from tunedlens.analyze import detect as imported

    assert imported is detect


def test_a_tiny_run_produces_a_report_and_its_files(
    model, lens, tiny_tokenizer, task_file, tmp_path
):
    calls = []
    report = detect(
        model,
        tiny_tokenizer,
        {"tuned": lens},
        task_file,
        bootstrap=100,
        batch_size=5,
        progress=lambda done, total: calls.append((done, total)),
    )
    task = load_task(task_file)
    assert calls[-1] == (len(task.prompts), len(task.prompts))
    # 2 lenses x 2 lens feature sets + the hidden states, x 3 detectors.
    assert len(report.results) == (2 * 2 + 1) * 3
    assert {(r["lens"], r["features"]) for r in report.results} == {
        ("logit", "choices"),
        ("tuned", "choices"),
        ("logit", "trajectory"),
        ("tuned", "trajectory"),
        (None, "hidden"),
    }
    for row in report.results:
        assert 0.0 <= row["auroc"] <= 1.0
        low, high = row["auroc_ci95"]
        assert low <= row["auroc_median"] <= high
        assert row["n_normal"] == 6 and row["n_anomalous"] == 12 and row["n_train"] == 18
        assert row["normal_flagged"] == 0.0  # fewer than 100 normal prompts: none above threshold
        assert set(row["controls"]) == {"filler"} and row["controls"]["filler"]["n"] == 12
    summary = report.tasks["words"]
    assert summary["counts"]["normal"] == {"train": 18, "test": 6}
    assert summary["mean_tokens"]["anomalous"] > summary["mean_tokens"]["normal"]
    trajectories = summary["trajectories"]["tuned"]["margin"]
    assert list(trajectories) == ["normal", "anomalous", "filler"]
    assert len(trajectories["normal"]["median"]) == lens.n_blocks + 1
    assert report.settings["hidden_row"] == lens.n_blocks // 2

    written = report.save(tmp_path / "out")
    names = {p.name for p in written}
    assert {
        "detect.json",
        "detect.csv",
        "scores.csv",
        "answers.csv",
        "summary.md",
        "trajectories_words.png",
        "trajectories_words.html",
        "roc_words.png",
        "roc_words.html",
    } <= names
    payload = json.loads((tmp_path / "out" / "detect.json").read_text())
    assert payload["schema"] == "tunedlens.detect/1" and len(payload["results"]) == 15
    rows = list(csv.DictReader((tmp_path / "out" / "detect.csv").open()))
    assert len(rows) == 15 and "filler_flagged" in rows[0] and rows[-1]["lens"] == ""
    scores = list(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
    assert len(scores) == 15 * (6 + 12 + 12)  # every held-out prompt, every combination
    answers = list(csv.DictReader((tmp_path / "out" / "answers.csv").open()))
    assert len(answers) == len(task.prompts)
    assert all((a["answer"] == a["label"]) == (a["correct"] == "True") for a in answers)
    assert "plotly" in (tmp_path / "out" / "roc_words.html").read_text()
    assert (tmp_path / "out" / "trajectories_words.png").stat().st_size > 10_000
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| tuned | trajectory | lof |" in markdown
    with pytest.raises(OutputError, match="already holds"):
        report.save(tmp_path / "out")  # nothing overwritten without force
    report.save(tmp_path / "out", force=True, plots=False)


def test_the_run_is_seeded(model, tiny_tokenizer, task_file):
    arguments = dict(
        features=("trajectory",), detectors=("isolation-forest", "mahalanobis"), bootstrap=50
    )
    first = detect(model, tiny_tokenizer, None, task_file, seed=2, **arguments)
    again = detect(model, tiny_tokenizer, None, task_file, seed=2, **arguments)
    assert first.results == again.results and first.scores == again.scores


def test_features_equal_a_direct_computation(model, lens, tiny_tokenizer, task_file):
    encoded = encode_task(load_task(task_file), tiny_tokenizer, 64)
    lenses = {"logit": LogitLens(model), "tuned": lens}
    readings = read_task(model, lenses, encoded, hidden_row=1, batch_size=4, memory_budget=2**20)
    for index in (0, 3, 7):
        ids = torch.tensor([encoded.input_ids[index]])
        residuals = collect_residuals(model, ids)
        assert np.allclose(
            readings.hidden[index], residuals.hidden[1][0].double().mean(0).numpy(), atol=1e-5
        )
        final = residuals.logits[0, -1].double().log_softmax(-1)
        for name, chosen in lenses.items():
            for row in range(lens.n_blocks + 1):
                with torch.no_grad():
                    logprobs = chosen(residuals.hidden[row][0, -1], row).double().log_softmax(-1)
                expected = logprobs[encoded.choice_ids[index]].numpy() / math.log(2)
                assert np.allclose(readings.choice_bits[name][index, row], expected, atol=1e-4)
                entropy = -(logprobs.exp() * logprobs).sum() / math.log(2)
                kl = (final.exp() * (final - logprobs)).sum() / math.log(2)
                assert readings.entropy_bits[name][index, row] == pytest.approx(
                    float(entropy), abs=1e-4
                )
                assert readings.kl_bits[name][index, row] == pytest.approx(float(kl), abs=1e-4)
                assert readings.top1[name][index, row] == int(logprobs.argmax())
    choices = feature_matrix(readings, "choices", "tuned")  # two choices: their log-odds per row
    bits = readings.choice_bits["tuned"]
    assert np.allclose(choices, bits[..., 0] - bits[..., 1])
    trajectory = feature_matrix(readings, "trajectory", "logit")
    assert trajectory.shape == (len(encoded.input_ids), 4 * (lens.n_blocks + 1) - 1)


def _readings(task, answers, rows=3):
    """Readings whose output row answers ``answers`` (choice indices), for attack success."""
    n, k = len(task.prompts), task.n_choices
    bits = np.full((n, rows, k), -5.0)
    bits[np.arange(n), -1, answers] = -0.1
    grid = np.zeros((n, rows))
    return Readings(
        {"logit": bits},
        {"logit": grid},
        {"logit": grid},
        {"logit": grid},
        {"logit": np.zeros((n, rows), dtype=int)},
        np.zeros((n, 4)),
        np.full(n, 10),
    )


def test_attack_success_counts_changed_and_followed_answers():
    task = load_task("sentiment", n_items=8, shots=1)
    # The model answers correctly, except that it obeys the injection.
    answers = np.array([p.target if p.kind == "injected" else p.label for p in task.prompts])
    attack, records = attack_success(task, _readings(task, answers), output_row=2)
    assert attack["accuracy"] == {"normal": 1.0, "injected": 0.0, "separators": 1.0, "filler": 1.0}
    assert attack["answers_changed"] == 1.0 and attack["followed_injection"] == 1.0
    assert attack["worked"] and attack["warning"] is None
    assert sum(r["followed"] is True for r in records) == 2
    ignored = np.array([p.label for p in task.prompts])  # the injection changes nothing
    attack, _ = attack_success(task, _readings(task, ignored), output_row=2)
    assert attack["answers_changed"] == 0.0 and attack["followed_injection"] == 0.0
    assert not attack["worked"] and "the attack failed on this model" in attack["warning"]


def test_a_failed_attack_is_said_prominently(model, tiny_tokenizer, tmp_path):
    path = _task_file(tmp_path / "same.jsonl", anomalies_change=False)  # anomalies = normal prompts
    report = detect(
        model,
        tiny_tokenizer,
        None,
        path,
        features=("choices",),
        detectors=("mahalanobis",),
        bootstrap=0,
    )
    assert report.tasks["same"]["attack"]["accuracy_drop"] < 0.10
    assert report.warnings and "detects their length and format" in report.warnings[0]
    report.save(tmp_path / "out", plots=False)
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert markdown.splitlines()[2].startswith("> **Warning:** the anomalies of `same`")
    assert report.results[0]["auroc_ci95"] is None


def test_score_task_fits_on_training_prompts_only():
    task = load_task("arithmetic", n_items=12, shots=1)
    rng = np.random.default_rng(0)
    n = len(task.prompts)
    readings = _readings(task, np.array([p.label for p in task.prompts]))
    # Choice features that mark the injected prompts: perfectly detectable.
    shifted = readings.choice_bits["logit"] + rng.normal(
        0, 0.1, readings.choice_bits["logit"].shape
    )
    shifted[[i for i, p in enumerate(task.prompts) if p.anomalous]] += 3.0
    readings = Readings(
        {"logit": shifted},
        readings.entropy_bits,
        readings.kl_bits,
        readings.max_prob,
        readings.top1,
        rng.normal(size=(n, 4)),
        readings.n_tokens,
    )
    results, curves, scores = score_task(
        task,
        readings,
        ["logit"],
        ["choices", "hidden"],
        ["mahalanobis", "lof"],
        seed=0,
        bootstrap=20,
    )
    choices = [r for r in results if r["features"] == "choices"]
    assert all(r["auroc"] == 1.0 and r["tpr_at_1pct_fpr"] == 1.0 for r in choices)
    assert all(r["controls"]["separators"]["auroc_anomalous_vs_control"] == 1.0 for r in choices)
    tested = {s["prompt"] for s in scores}
    assert tested == {i for i, p in enumerate(task.prompts) if p.split == "test"}
    assert len(curves) == len(results) == 4


def test_bad_arguments_are_refused_before_the_model_runs(
    model, tiny_tokenizer, task_file, tmp_path, monkeypatch
):
    def no_forward(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(model, "forward", no_forward)
    cases = [
        (dict(task="capitals"), "share a token"),  # ' A', ' B' are all <unk> for the tiny tokenizer
        (dict(task=task_file, features=("logits",)), "unknown feature set 'logits'"),
        (dict(task=task_file, detectors=("svm",)), "unknown detector 'svm'"),
        (dict(task=task_file, detectors=()), "detector must be distinct and not empty"),
        (dict(task=task_file, shots=3), "shots applies to built-in tasks"),
        (dict(task="capitals", shots=500), "shots=500 is more than task 'capitals' can give"),
        (dict(task=task_file, hidden_row=9), "outside this model's rows 0..2"),
        (
            dict(task=task_file, hidden_row=1, features=("choices",)),
            "hidden_row applies to the 'hidden'",
        ),
        (dict(task=task_file, seed=-1), "seed must be an integer >= 0"),
        (dict(task=task_file, bootstrap=1.5), "bootstrap must be an integer"),
        (dict(task=[task_file, task_file]), "two tasks are called the same"),
        (dict(task=task_file, lenses={"logit": LogitLens(model)}), "reserved for the logit lens"),
    ]
    for arguments, message in cases:
        with pytest.raises(AnalysisError, match=message):
            detect(
                model,
                tiny_tokenizer,
                arguments.pop("lenses", None),
                arguments.pop("task"),
                **arguments,
            )
    long = tmp_path / "long.jsonl"
    line = {"choices": [" w5", " w6"], "label": 0, "anomalous": False}
    long.write_text(
        "\n".join(json.dumps({**line, "prompt": "w9 " * 70, "anomalous": i == 0}) for i in range(6))
    )
    with pytest.raises(
        AnalysisError, match="70 tokens long, longer than the model's context of 64"
    ):
        detect(model, tiny_tokenizer, None, long)
    multi = tmp_path / "multi.jsonl"
    multi.write_text(
        "\n".join(
            json.dumps({**line, "choices": [" w5 w7", " w6"], "prompt": "w9", "anomalous": i == 0})
            for i in range(6)
        )
    )
    with pytest.raises(
        AnalysisError, match=r"choice ' w5 w7' is 2 tokens for this tokenizer .*single token"
    ):
        detect(model, tiny_tokenizer, None, multi)
    with pytest.raises(AnalysisError, match="needs the model's tokenizer"):
        detect(model, None, None, task_file)


def test_check_detect_args_needs_no_model(task_file):
    tasks, features, detectors = check_detect_args(
        [task_file, "sentiment"], features="hidden", detectors=["lof"], n_items=None
    )
    assert [t.name for t in tasks] == ["words", "sentiment"]
    assert features == ("hidden",) and detectors == ("lof",)


def test_a_lens_of_another_model_is_refused(tiny_tokenizer, task_file, model):
    from tiny_models import random_lens, tiny_model

    other = random_lens(tiny_model("llama", seed=1))
    with pytest.raises(LensMismatch):
        detect(model, tiny_tokenizer, {"other": other}, task_file)


def test_a_missing_scikit_learn_is_named_with_its_extra(task_file, monkeypatch):
    from tunedlens.errors import MissingExtra

    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now fails
    with pytest.raises(MissingExtra, match=r"(?s)scikit-learn.*pip install 'tunedlens\[analyze\]'"):
        check_detect_args(task_file)
    # Mahalanobis is written in numpy: it needs no extra.
    assert check_detect_args(task_file, detectors=("mahalanobis",))[2] == ("mahalanobis",)
