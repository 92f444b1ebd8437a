"""Training within a time budget: the probe sizes the tokens, provenance records them, and
``tokens=N`` reproduces the run; a passed deadline stops at once with a validated lens."""

import json
import time

import pytest
import torch

from tiny_models import tiny_model, word_text
from tunedlens.commands.train import run as run_training
from tunedlens.lenses import TunedLens
from tunedlens.train import recipe_config, train_lens

SMALL = dict(seq_len=16, batch_size=4, tokens_per_step=64, val_tokens=64, lstsq_tokens=256)


@pytest.fixture
def text(tmp_path):
    return word_text(tmp_path / "text.txt", 40000)


def test_budget_sizes_tokens_and_tokens_reproduce_the_run(
    tiny_model_dir, text, tmp_path, monkeypatch
):
    import tunedlens.train.loop as loop

    # The planned run must finish for the comparison; stopping at the deadline is tested below.
    monkeypatch.setattr(loop, "_past", lambda deadline, world: False)
    config = recipe_config("default", time_budget_s=6.0, **SMALL)
    start = time.monotonic()
    result = run_training(str(tiny_model_dir), config, tmp_path / "budget", data=str(text))
    assert time.monotonic() - start < 6.0 * 3  # the plan fits the budget (generous: CI is noisy)
    record = json.loads((tmp_path / "budget" / "provenance.json").read_text())["training"]
    planned = record["time_budget"]["planned_tokens"]
    assert record["config"]["tokens"] == planned and planned % 64 == 0 and planned >= 64
    assert record["time_budget"]["probe_tokens_per_s"] > 0
    assert not record["time_budget"]["stopped_at_budget"] and record["train_tokens"] == planned
    assert record["trained_tokens"] == planned and record["time_budget"]["validation_s_each"] > 0
    again = recipe_config("default", tokens=planned, **SMALL)
    rerun = run_training(str(tiny_model_dir), again, tmp_path / "tokens", data=str(text))
    for name, value in result.lens.translator.state_dict().items():
        assert torch.equal(rerun.lens.translator.state_dict()[name], value), name


def test_a_passed_deadline_stops_after_one_step_with_a_validated_lens():
    model = tiny_model("llama")
    data = torch.randint(3, 120, (72, 16), generator=torch.Generator().manual_seed(0))
    config = recipe_config(
        "default", tokens=16 * 64, lstsq_init=False, **{**SMALL, "tokens_per_step": 128}
    )
    lens = TunedLens.from_model(model)
    result = train_lens(
        lens, model, data[:64], config, val_data=data[64:], deadline=time.monotonic()
    )
    assert result.stopped_at_budget and result.steps_done == 1 < result.resolved.steps
    assert result.val_kl is not None and result.history[-1]["val_kl"] is not None


@pytest.mark.parametrize("value", ["soon", "-5m", "0", "1e9h", "inf", "nan", "30m1h", "1h30"])
def test_bad_budgets(value, monkeypatch, capsys):
    import sys

    from tunedlens.cli import main
    from tunedlens.cli.config_options import parse_duration

    with pytest.raises(ValueError, match="must|longer than 30 days"):
        parse_duration(value)
    monkeypatch.setattr(
        sys, "argv", ["tunedlens", "train", "demo", "--out", "x", "--time-budget", value]
    )
    with pytest.raises(SystemExit) as caught:
        main()
    assert caught.value.code == 2 and "error: --time-budget: " in capsys.readouterr().err
    assert parse_duration("1.5h") == 5400.0 and parse_duration("90") == 90.0
    assert parse_duration("1h30m") == parse_duration("90m") == 5400.0
    assert parse_duration("1h 20m 30s") == 4830.0


def test_time_budget_and_tokens_exclude_each_other(monkeypatch, capsys):
    import sys

    from tunedlens.cli import main

    monkeypatch.setattr(
        sys,
        "argv",
        ["tunedlens", "train", "demo", "--out", "x", "--time-budget", "5m", "--tokens", "1000"],
    )
    with pytest.raises(SystemExit) as caught:
        main()
    assert caught.value.code == 2 and "not both" in capsys.readouterr().err


def test_probe_steps_leave_out_the_first_micro_batch():
    from tunedlens.train.run import _probe_steps

    # Two steps of 3 micro-batches: a 5 s warm-up, then 1 s each; later-epoch ones 0.5 s each.
    marks = [0.0, 5.0, 6.0, 7.0, 7.5, 8.0, 8.5]
    assert _probe_steps(marks, [7.0, 1.5]) == [3.0, 1.5]
    assert _probe_steps([], [7.0, 1.5]) == [7.0, 1.5]  # not the first process: whole steps
    assert _probe_steps([0.0, 4.0], [4.0]) == [4.0]  # one micro-batch a step: nothing to leave out


def test_a_budget_with_epochs_probes_both_kinds_of_step(
    tiny_model_dir, text, tmp_path, monkeypatch
):
    import tunedlens.train.loop as loop

    probes = []
    real = loop.train_lens

    def spy(lens, model, data, config, **kwargs):
        result = real(lens, model, data, config, **kwargs)
        if config.time_budget_s is None and config.val_tokens == 0:  # the probe
            probes.append(result)
        return result

    monkeypatch.setattr("tunedlens.train.run.train_lens", spy)
    monkeypatch.setattr(loop, "_past", lambda deadline, world: False)
    config = recipe_config("default", time_budget_s=6.0, epochs=3, **SMALL)
    result = run_training(str(tiny_model_dir), config, tmp_path / "epochs", data=str(text))
    (probe,) = probes
    assert probe.resolved.steps == 2 and probe.resolved.cache_residuals  # a step of each kind
    record = json.loads((tmp_path / "epochs" / "provenance.json").read_text())["training"]
    planned = record["time_budget"]["planned_tokens"]
    assert record["config"]["epochs"] == 3 and result.resolved.steps == 3 * planned // 64
    assert result.steps_done == result.resolved.steps


def test_the_demo_trains_on_a_few_minutes_of_tokens_unless_told():
    from tunedlens.commands.train import DEMO_TOKENS, config_from_options

    assert config_from_options("default", {}, "demo").tokens == DEMO_TOKENS == 65536
    assert config_from_options("default", {"tokens": 32768}, "demo").tokens == 32768
    budget = config_from_options("default", {"time_budget_s": 60.0}, "demo")
    assert budget.tokens == recipe_config("default").tokens  # sized by the probe later
    assert config_from_options("default", {}, "org/model").tokens == 2**21


def test_a_bad_dtype_is_named_by_its_option_before_loading(monkeypatch, capsys, tmp_path):
    import sys

    import tunedlens.commands.train as command
    from tunedlens.cli import main

    monkeypatch.setattr(command, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    argv = ["tunedlens", "train", "demo", "--out", str(tmp_path / "x"), "--dtype", "bogus"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as caught:
        main()
    error = capsys.readouterr().err
    assert caught.value.code == 2 and "error: --dtype: dtype must be one of bf16," in error


def test_the_summary_says_when_the_start_was_kept(capsys):
    from types import SimpleNamespace

    from tunedlens.cli.progress import TrainingProgress

    result = SimpleNamespace(
        val_kl=None, best_step=0, steps_done=2, stopped_early=False, wall_time=3.0, seconds={}
    )
    TrainingProgress.summary(None, result, "out")
    assert "the least-squares start (step 0) validated best" in capsys.readouterr().out
    TrainingProgress.summary(None, SimpleNamespace(**{**vars(result), "best_step": 2}), "out")
    assert "validated best" not in capsys.readouterr().out
