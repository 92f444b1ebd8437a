"""`tunedlens fit-jlens`, then the J-lens everywhere a lens goes: predict, show, eval, lens info."""

import json

import torch
from typer.testing import CliRunner

from tunedlens.cli.app import app

runner = CliRunner()


def test_fit_then_use_everywhere(tiny_model_dir, tmp_path):
    words = torch.randint(4, 128, (2000,), generator=torch.Generator().manual_seed(0)).tolist()
    (tmp_path / "text.txt").write_text(" ".join(f"w{i}" for i in words))
    out = tmp_path / "jlens"
    result = runner.invoke(app, ["fit-jlens", str(tiny_model_dir), "--data", str(tmp_path / "text.txt"),
                                 "--prompts", "2", "--seq-len", "20", "--skip-first", "4",
                                 "--dim-batch", "8", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "jlens.safetensors").exists() and "fitted rows 0..1 on 2 prompts" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["metadata"]["data_content_hash"] and config["n_prompts"] == 2
    info = json.loads(runner.invoke(app, ["lens", "info", str(out), "--json"]).stdout)
    assert info["kind"] == "jacobian" and info["rows_with_matrix"] == [0, 1]
    predict = runner.invoke(app, ["predict", str(tiny_model_dir), "w1 w2 w3", "--lens", str(out),
                                  "--json"])  # fmt: skip
    assert predict.exit_code == 0 and json.loads(predict.stdout)["lens"] == str(out)
    figure = tmp_path / "three.html"
    show = runner.invoke(app, ["show", str(tiny_model_dir), "w1 w2 w3", "--lens", str(out),
                               "--out", str(figure)])  # fmt: skip
    assert show.exit_code == 0 and "jacobian lens jlens" in figure.read_text()
    report = tmp_path / "report"
    evaluation = runner.invoke(app, ["eval", str(tiny_model_dir), "--lens", str(out), "--data",
                                     str(tmp_path / "text.txt"), "--tokens", "64", "--seq-len", "16",
                                     "--prompts", "none", "--bootstrap", "0", "--no-plots",
                                     "--out", str(report)])  # fmt: skip
    assert evaluation.exit_code == 0, evaluation.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["lenses"]["jlens"]["kind"] == "JacobianLens"
    again = runner.invoke(app, ["fit-jlens", str(tiny_model_dir), "--data", str(tmp_path / "text.txt"),
                                "--prompts", "2", "--seq-len", "20", "--out", str(out)])  # fmt: skip
    assert again.exit_code != 0  # --out holds a lens: refused without --force
