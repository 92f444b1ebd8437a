"""``--data self`` end to end: train samples the text, fit-jlens reuses it, eval holds out more."""

import json

from typer.testing import CliRunner

from tunedlens.cli.app import app
from tunedlens.data.self_text import read_cache

runner = CliRunner()


def test_train_fit_jlens_and_eval_on_the_models_own_text(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEDLENS_CACHE", str(tmp_path / "default-cache"))
    cache = tmp_path / "self-cache"
    self_options = ["--data", "self", "--self-cache", str(cache), "--self-doc-tokens", "24"]
    self_options += ["--self-batch-size", "8", "--self-top-p", "0.95"]
    train = runner.invoke(
        app,
        [
            "train",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "lens"),
            *self_options,
            *["--seq-len", "16", "--batch-size", "4", "--tokens-per-step", "64"],
            *["--tokens", "256", "--val-tokens", "32"],
        ],
    )
    assert train.exit_code == 0, train.output
    (cached,) = cache.iterdir()
    header, documents = read_cache(cached)
    assert header["sampling"]["top_p"] == 0.95 and header["model"]["fingerprint"]
    training = json.loads((tmp_path / "lens" / "provenance.json").read_text())["training"]
    assert training["data"] == "self" and training["val_data"] == "self (held-out blocks)"
    record = training["self_text"]
    assert record["cache_file"] == str(cached) and record["documents"] == len(documents)
    assert record["sampled_now"] == len(documents) and record["tokens"] >= 256 + 32
    assert not (tmp_path / "default-cache").exists()  # --self-cache names the place

    stamp = cached.stat().st_mtime_ns
    fit = runner.invoke(
        app,
        [
            "fit-jlens",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "jlens"),
            *self_options,
            *["--prompts", "2", "--seq-len", "16", "--skip-first", "2", "--dim-batch", "8"],
        ],
    )
    assert fit.exit_code == 0, fit.output
    metadata = json.loads((tmp_path / "jlens" / "config.json").read_text())["metadata"]
    assert metadata["data"] == "self" and metadata["self_text"]["sampled_now"] == 0
    assert cached.stat().st_mtime_ns == stamp  # reused, not sampled again

    evaluation = runner.invoke(
        app,
        [
            "eval",
            str(tiny_model_dir),
            "--lens",
            str(tmp_path / "lens"),
            *self_options,
            *["--self-seed", "1", "--tokens", "64", "--seq-len", "16"],
            *["--out", str(tmp_path / "report"), "--prompts", "none", "--no-plots"],
            *["--bootstrap", "10"],
        ],
    )
    assert evaluation.exit_code == 0, evaluation.output
    data = json.loads((tmp_path / "report" / "metrics.json").read_text())["data"]
    assert data["spec"] == "self" and data["self_text"]["sampling"]["seed"] == 1
    assert len(list(cache.iterdir())) == 2  # another seed: other text, its own file


def test_the_sampling_bars_count_tokens_and_end_at_the_total():
    from tunedlens.cli.progress import SampleProgress, TrainingProgress

    with SampleProgress() as bar:
        bar.update(0, 100)
        bar.update(60, 100)
        assert bar.progress.tasks[0].completed == 60 and not bar.finished
        bar.update(100, 100)
        assert bar.finished and bar.progress.tasks[0].completed == 100
        bar.update(100, 100)  # after the end: nothing more is drawn
    with TrainingProgress(enabled=False) as training:
        training.sample(10, 50)
        training.sample(50, 50)
        (task,) = training.progress.tasks
        assert task.description == "sample" and task.completed == 50
        assert task.fields["count"] == "50/50 tokens"
