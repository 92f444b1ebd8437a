import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tiny_models import word_text
from tunedlens.cli.app import app
from tunedlens.lenses import read_lens

runner = CliRunner()
ARGS = ["--seq-len", "16", "--batch-size", "4", "--tokens-per-step", "64", "--val-tokens", "64"]


def test_train_end_to_end(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "lens"
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
            "512",
            "--val-every",
            "4",
            *ARGS,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "validation KL" in result.stdout and "lens saved to" in result.stdout
    assert "logit lens" in result.stdout and "least-squares start" in result.stdout
    # A bar per phase on stderr, the training bar in tokens, the last step's figures under it.
    for bar in ("packing", "least squares", "validation"):
        assert bar in result.stderr
    assert "512/512 tokens" in result.stderr and "step 8/8:" in result.stderr
    assert "bits (mean over layers)" in result.stderr
    lens = read_lens(out)
    assert lens.format == "native" and lens.translator.kind == "affine"
    provenance = json.loads((out / "provenance.json").read_text())["training"]
    assert provenance["data"] == str(text_file) and len(provenance["data_content_hash"]) == 64
    assert provenance["train_tokens"] == 512 and provenance["config"]["recipe"] == "default"
    assert len(provenance["val_kl_bits"]) == 2 and provenance["seed"] == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 9))
    assert log[3]["val_kl_bits"] is not None and log[3]["loss_bits"] > 0
    assert len(log[3]["logit_val_kl_bits"]) == 2 and len(provenance["logit_val_kl_bits"]) == 2
    layer_loss = [value for value in log[3]["layer_loss"] if value is not None]
    assert log[3]["loss_mean_bits"] == pytest.approx(log[3]["loss_bits"] / len(layer_loss))
    again = runner.invoke(
        app,
        [
            "train",
            str(tiny_model_dir),
            "--data",
            str(text_file),
            "--out",
            str(out),
            "--tokens",
            "512",
            *ARGS,
        ],
    )
    assert again.exit_code != 0 and "already holds a lens" in str(again.exception)


def test_train_errors(tiny_model_dir, text_file, tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            str(tiny_model_dir),
            "--data",
            str(text_file),
            "--out",
            str(tmp_path / "x"),
            "--tokens",
            "10000000",
            *ARGS,
        ],
    )
    assert "Lower --tokens" in str(result.exception)
    result = runner.invoke(
        app,
        [
            "train",
            str(tiny_model_dir),
            "--data",
            str(text_file),
            "--out",
            str(tmp_path / "y"),
            "--seq-len",
            "128",
            "--batch-size",
            "4",
            "--tokens-per-step",
            "512",
        ],
    )
    assert "longer than the model's context of 64" in str(result.exception)


def _train_command(model_dir, data, out, *extra):
    return [
        sys.executable,
        "-m",
        "tunedlens",
        "train",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--tokens",
        "16384",
        "--checkpoint-every",
        "1",
        *ARGS,
        *extra,
    ]


@pytest.fixture
def long_text(tmp_path):
    """Enough words for 256 steps with a checkpoint after each: the kill lands mid-run."""
    return word_text(tmp_path / "long.txt", 24000)


def test_sigkill_then_resume_is_bit_identical(tiny_model_dir, long_text, tmp_path):
    text_file = long_text
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "uninterrupted"
    subprocess.run(
        _train_command(tiny_model_dir, text_file, reference),
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    out = tmp_path / "killed"
    process = subprocess.Popen(
        _train_command(tiny_model_dir, text_file, out),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # let it run on: the kill lands mid-step or mid-checkpoint
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "lens.safetensors").exists(), "the run finished before it could be killed"
    subprocess.run(
        _train_command(tiny_model_dir, text_file, out, "--resume"),
        check=True,
        env=env,
        capture_output=True,
        timeout=300,
    )
    expected, resumed = (
        load_file(reference / "lens.safetensors"),
        load_file(out / "lens.safetensors"),
    )
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    steps = [
        json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()
    ]
    assert steps[-1] == 256


def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tiny_model_dir, long_text, tmp_path):
    text_file = long_text
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "interrupted"
    process = subprocess.Popen(
        _train_command(tiny_model_dir, text_file, out),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "the last checkpoint" in err and "--resume" in err and "Traceback" not in err
    assert (out / "checkpoint.pt").exists() and not (out / "lens.safetensors").exists()


def test_sigterm_during_a_forced_run_leaves_the_earlier_run_and_no_half_written_folder(
    tiny_model_dir, long_text, tmp_path
):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    out.mkdir()
    (out / "train_log.jsonl").write_text('{"step": 1}\n')  # an earlier run's log
    process = subprocess.Popen(
        _train_command(tiny_model_dir, long_text, out, "--force"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    staged = []
    while not staged and time.time() < deadline:
        staged = [p for p in tmp_path.iterdir() if p.name.startswith(".run.partial-")]
        time.sleep(0.01)
    assert staged, "the forced run never started writing beside --out"
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.partial-")]
    assert [p.name for p in out.iterdir()] == ["train_log.jsonl"]
    assert (out / "train_log.jsonl").read_text() == '{"step": 1}\n'
