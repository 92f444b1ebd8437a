"""`tunedlens fit-jlens`, then the J-lens everywhere a lens goes: predict, show, eval, lens info."""

import json
import os

import torch
from typer.testing import CliRunner

from tunedlens.cli.app import app

runner = CliRunner()


def test_fit_then_use_everywhere(tiny_model_dir, tmp_path):
    words = torch.randint(4, 128, (2000,), generator=torch.Generator().manual_seed(0)).tolist()
    (tmp_path / "text.txt").write_text(" ".join(f"w{i}" for i in words))
    out = tmp_path / "jlens"
    result = runner.invoke(
        app,
        [
            "fit-jlens",
            str(tiny_model_dir),
            "--data",
            str(tmp_path / "text.txt"),
            "--prompts",
            "2",
            "--seq-len",
            "20",
            "--skip-first",
            "4",
            "--dim-batch",
            "8",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "jlens.safetensors").exists() and "fitted rows 0..1 on 2 prompts" in result.output
    # Told up front: the work, the expected time once timed, and that 2 prompts are too few.
    assert "fitting 2 prompts: one forward and" in result.output
    assert "for the fit" in result.output and "noise in its middle rows" in result.output
    for path in (out, out / "jlens.safetensors", out / "config.json"):  # not owner-only (umask 022)
        assert path.stat().st_mode & 0o044 == 0o044 or os.umask(os.umask(0)) & 0o044, path
    config = json.loads((out / "config.json").read_text())
    assert config["metadata"]["data_content_hash"] and config["n_prompts"] == 2
    info = json.loads(runner.invoke(app, ["lens", "info", str(out), "--json"]).stdout)
    assert info["kind"] == "jacobian" and info["rows_with_matrix"] == [0, 1]
    predict = runner.invoke(
        app, ["predict", str(tiny_model_dir), "w1 w2 w3", "--lens", str(out), "--json"]
    )
    assert predict.exit_code == 0 and json.loads(predict.stdout)["lens"] == str(out)
    figure = tmp_path / "three.html"
    show = runner.invoke(
        app, ["show", str(tiny_model_dir), "w1 w2 w3", "--lens", str(out), "--out", str(figure)]
    )
    assert show.exit_code == 0 and "jacobian lens jlens" in figure.read_text()
    report = tmp_path / "report"
    evaluation = runner.invoke(
        app,
        [
            "eval",
            str(tiny_model_dir),
            "--lens",
            str(out),
            "--data",
            str(tmp_path / "text.txt"),
            "--tokens",
            "64",
            "--seq-len",
            "16",
            "--prompts",
            "none",
            "--bootstrap",
            "0",
            "--no-plots",
            "--out",
            str(report),
        ],
    )
    assert evaluation.exit_code == 0, evaluation.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["lenses"]["jlens"]["kind"] == "JacobianLens"
    again = runner.invoke(
        app,
        [
            "fit-jlens",
            str(tiny_model_dir),
            "--data",
            str(tmp_path / "text.txt"),
            "--prompts",
            "2",
            "--seq-len",
            "20",
            "--out",
            str(out),
        ],
    )
    assert again.exit_code != 0  # --out holds a lens: refused without --force


def _fit(model_dir, text, out, *extra):
    return runner.invoke(
        app,
        [
            "fit-jlens",
            str(model_dir),
            "--data",
            str(text),
            "--prompts",
            "4",
            "--seq-len",
            "20",
            "--skip-first",
            "4",
            "--dim-batch",
            "8",
            "--out",
            str(out),
            *extra,
        ],
    )


def _matrices(path):
    from safetensors.torch import load_file

    return load_file(path / "jlens.safetensors")


def test_interrupt_resume_parts_merge_and_convert(tiny_model_dir, tmp_path, monkeypatch):
    import tunedlens.jacobian.fit as fitting

    words = torch.randint(4, 128, (3000,), generator=torch.Generator().manual_seed(1)).tolist()
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{i}" for i in words))
    assert _fit(tiny_model_dir, text, tmp_path / "whole").exit_code == 0
    whole = _matrices(tmp_path / "whole")

    original, calls = fitting.prompt_jacobians, []

    def interrupt_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(fitting, "prompt_jacobians", interrupt_on_third)
    stopped = _fit(tiny_model_dir, text, tmp_path / "run", "--checkpoint-every", "1")
    assert stopped.exit_code == 130 and "--resume" in stopped.output
    assert (tmp_path / "run" / "jlens_fit_state.safetensors").exists()
    monkeypatch.setattr(fitting, "prompt_jacobians", original)
    resumed = _fit(tiny_model_dir, text, tmp_path / "run", "--checkpoint-every", "1", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert not (tmp_path / "run" / "jlens_fit_state.safetensors").exists()  # done: sums deleted
    for name, matrix in _matrices(tmp_path / "run").items():
        assert torch.equal(matrix, whole[name]), name

    for part in ("0/2", "1/2"):
        result = _fit(tiny_model_dir, text, tmp_path / f"part{part[0]}", "--part", part)
        assert result.exit_code == 0 and "on 2 prompts" in result.output, result.output
    merged = runner.invoke(
        app,
        [
            "lens",
            "merge",
            str(tiny_model_dir),
            str(tmp_path / "part0"),
            str(tmp_path / "part1"),
            "--out",
            str(tmp_path / "merged"),
        ],
    )
    assert merged.exit_code == 0 and "(4 prompts)" in merged.output, merged.output
    for name, matrix in _matrices(tmp_path / "merged").items():
        torch.testing.assert_close(matrix, whole[name], rtol=1e-6, atol=1e-7)

    artifact = tmp_path / "conv" / "lens.pt"
    for args in (
        ["lens", "convert", str(tmp_path / "whole"), str(artifact), "--format", "artifact"],
        ["lens", "convert", str(artifact), str(tmp_path / "back")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    info = json.loads(runner.invoke(app, ["lens", "info", str(artifact), "--json"]).stdout)
    assert info["kind"] == "jacobian" and info["rows_with_matrix"] == [1]
    back = _matrices(tmp_path / "back")
    assert set(back) == {"row.1"}  # the artifact has no place for row 0
    assert back["row.1"].dtype == torch.float16  # kept as published, converted when used
    torch.testing.assert_close(back["row.1"].float(), whole["row.1"], rtol=1e-3, atol=2e-3)


def test_torchrun_fit_equals_one_process(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    words = torch.randint(4, 128, (3000,), generator=torch.Generator().manual_seed(2)).tolist()
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{i}" for i in words))
    args = [
        "fit-jlens",
        str(tiny_model_dir),
        "--data",
        str(text),
        "--prompts",
        "5",
        "--seq-len",
        "20",
        "--skip-first",
        "4",
        "--dim-batch",
        "8",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "-m",
            "tunedlens",
            *args,
            "--out",
            str(tmp_path / "multi"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("fitted rows 0..1 on 5 prompts") == 1  # the first process speaks
    assert _fit_once(args, tmp_path / "single").exit_code == 0
    multi, single = _matrices(tmp_path / "multi"), _matrices(tmp_path / "single")
    for name, matrix in single.items():
        torch.testing.assert_close(multi[name], matrix, rtol=1e-6, atol=1e-7)


def _fit_once(args, out):
    return runner.invoke(app, [*args, "--out", str(out)])
