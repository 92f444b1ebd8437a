"""Run logging: train_log.jsonl (timings included), TensorBoard and wandb (offline) mirrors of
it, and ``tunedlens lens curves`` drawing it."""

import json

import pytest
from typer.testing import CliRunner

from tunedlens.cli.app import app
from tunedlens.commands.curves import run as run_curves
from tunedlens.errors import TunedLensError
from tunedlens.plot.html import bundle_name
from tunedlens.train.curves import read_train_log

runner = CliRunner()
ARGS = ["--seq-len", "16", "--batch-size", "4", "--tokens-per-step", "64", "--val-tokens", "64"]


@pytest.fixture
def logged_run(tiny_model_dir, text_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "train",
            str(tiny_model_dir),
            "--data",
            str(text_file),
            "--out",
            str(out),
            "--tokens",
            "384",
            "--val-every",
            "2",
            "--points",
            "both",
            "--log-to",
            "tensorboard",
            "--log-to",
            "wandb",
            *ARGS,
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_the_log_has_timings_and_tensorboard_mirrors_it(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = read_train_log(logged_run)
    assert [r["step"] for r in log] == list(range(1, 7))
    assert all(r["step_s"] > 0 and r["tokens_per_s"] > 0 for r in log)
    validated = [r for r in log if r.get("val_kl_bits") is not None]
    assert [r["step"] for r in validated] == [2, 4, 6] and all(r["val_s"] > 0 for r in validated)

    events = EventAccumulator(str(logged_run / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_bits", "train/lr", "train/tokens_per_s", "val/kl_bits_mean"} <= tags
    assert {"val/kl_bits/layer_0", "val/kl_bits/layer_1.mid"} <= tags  # rows named by their points
    losses = events.Scalars("train/loss_bits")
    assert [e.step for e in losses] == list(range(1, 7))
    assert [e.value for e in losses] == pytest.approx([r["loss_bits"] for r in log], rel=1e-6)
    means = events.Scalars("val/kl_bits_mean")
    expected = [sum(r["val_kl_bits"]) / len(r["val_kl_bits"]) for r in validated]
    assert [e.value for e in means] == pytest.approx(expected, rel=1e-6)
    mid = events.Scalars("val/kl_bits/layer_1.mid")
    assert [e.value for e in mid] == pytest.approx(
        [r["val_kl_bits"][3] for r in validated], rel=1e-6
    )


def test_wandb_writes_an_offline_run(logged_run):
    runs = list((logged_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (records,) = runs[0].glob("run-*.wandb")  # wandb's own record file (protobuf, keys in clear)
    data = records.read_bytes()
    assert data.count(b"train/loss_bits") >= 6 and data.count(b"val/kl_bits_mean") >= 3
    assert b"val/kl_bits/layer_1.mid" in data and b'"both"' in data  # history and config


def test_lens_curves_draws_the_log(logged_run, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    before = sorted(path.name for path in logged_run.iterdir())
    result = runner.invoke(app, ["lens", "curves", str(logged_run)])
    assert result.exit_code == 0, result.output
    # The default page goes to the current folder, named after the run, never into the run.
    assert sorted(path.name for path in logged_run.iterdir()) == before
    page = (here / f"{logged_run.name}-curves.html").read_text()
    assert "validation KL per layer" in page and '"1.mid"' in page
    assert f"<title>training: {logged_run.name}</title>" in page
    assert [p.name for p in here.glob("plotly-*.min.js")] == [bundle_name()]
    png = run_curves(logged_run, tmp_path / "curves.png")
    assert png.stat().st_size > 10_000


def test_bad_logs_and_targets_are_refused(tmp_path, tiny_model_dir, text_file):
    with pytest.raises(TunedLensError, match="run folder '.*nosuch-run' does not exist"):
        run_curves(tmp_path / "nosuch-run")
    with pytest.raises(TunedLensError, match="holds no train_log.jsonl"):
        read_train_log(tmp_path)
    (tmp_path / "train_log.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(TunedLensError, match="lacks tokens, loss_bits, lr"):
        read_train_log(tmp_path)
    (tmp_path / "train_log.jsonl").write_text("not json\n")
    with pytest.raises(TunedLensError, match="line 1 is not JSON"):
        read_train_log(tmp_path)
    result = runner.invoke(
        app,
        [
            "train",
            str(tiny_model_dir),
            "--data",
            str(text_file),
            "--out",
            str(tmp_path / "o"),
            "--log-to",
            "mlflow",
            *ARGS,
        ],
    )
    assert result.exit_code != 0 and "choose tensorboard or wandb" in str(result.exception)
    assert not (tmp_path / "o").exists()  # refused before anything was made
    data = json.dumps({"step": 1, "tokens": 64, "loss_bits": 1.0, "lr": 0.1, "val_kl_bits": None})
    (tmp_path / "train_log.jsonl").write_text(data + "\n")
    with pytest.raises(Exception, match="must end in .html or .png"):
        run_curves(tmp_path, tmp_path / "curves.pdf")
