import csv
import json
import sys

import pytest
from typer.testing import CliRunner

from tunedlens.cli import main
from tunedlens.cli.app import app
from tunedlens.lenses import TunedLens
from tunedlens.models import load_model
from tunedlens.plot.html import bundle_name

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path, tiny_model_dir):
    words = " ".join(f"w{i % 120}" for i in range(400))
    (tmp_path / "data.txt").write_text(words)
    lines = [json.dumps({"prompt": f"w{i} w{i + 1}", "answer": f" w{i + 2}"}) for i in range(5)]
    (tmp_path / "suite.jsonl").write_text("\n".join(lines))
    model, _ = load_model(tiny_model_dir)
    TunedLens.from_model(model).save(tmp_path / "lens-a")
    return tmp_path


def test_eval_writes_every_report(workdir, tiny_model_dir):
    out = workdir / "out"
    args = [
        "eval",
        str(tiny_model_dir),
        "--lens",
        str(workdir / "lens-a"),
        "--data",
        str(workdir / "data.txt"),
        "--tokens",
        "64",
        "--seq-len",
        "16",
        "--out",
        str(out),
        "--prompts",
        str(workdir / "suite.jsonl"),
        "--bootstrap",
        "50",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["lenses"]) == {"logit", "lens-a"}
    assert metrics["tokens"] == 64 and len(metrics["lenses"]["lens-a"]["kl_bits"]) == 3
    assert {"kpis", "gates", "baseline", "prompts"} <= set(metrics)
    assert set(metrics["gates"]["lens-a"]) == {"A", "B", "C", "D", "E"}
    for name in ("records.csv", "pure-next-token.csv"):
        with (out / name).open() as handle:
            rows = list(csv.DictReader(handle))
        assert {row["lens"] for row in rows} == {"logit", "lens-a"}
    summary = (out / "summary.md").read_text()
    assert "| row |" in summary and "| output |" in summary and "Gates for `lens-a`" in summary
    html = (out / "kl.html").read_text()
    # Offline: the three pages share one plotly.js in the folder; nothing comes from the network.
    assert "Plotly.newPlot" in html and '<script src="http' not in html
    assert f'<script src="{bundle_name()}">' in html and "<title>KL(model" in html
    assert [path.name for path in out.glob("plotly*.js")] == [bundle_name()]
    assert sum(path.stat().st_size for path in out.glob("*.html")) < 1_000_000
    assert "lens-a" in html
    from PIL import Image

    with Image.open(out / "kl.png") as image:
        assert image.size == (960, 540)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tokens", "8", "--seq-len", "16"], "at least one sequence"),
        (["--tokens", "100000", "--seq-len", "16"], "tokens"),
        (["--prompts", "EMPTY"], "holds no prompts"),
    ],
)
def test_eval_bad_input_is_one_line(workdir, tiny_model_dir, monkeypatch, capsys, extra, message):
    (workdir / "empty.jsonl").write_text("")
    extra = [str(workdir / "empty.jsonl") if e == "EMPTY" else e for e in extra]
    args = [
        "eval",
        str(tiny_model_dir),
        "--data",
        str(workdir / "data.txt"),
        "--out",
        str(workdir / "out"),
        "--tokens",
        "32",
        "--seq-len",
        "16",
        *extra,
    ]
    monkeypatch.setattr(sys, "argv", ["tunedlens", *args])
    with pytest.raises(SystemExit) as caught:
        main()
    err = capsys.readouterr().err
    assert caught.value.code == 2 and message in err
    assert err.startswith("error:") and err.count("\n") <= 2


def test_eval_refuses_a_lens_for_another_model(workdir, tiny_model_dir, monkeypatch, capsys):
    from tiny_models import tiny_model

    TunedLens.from_model(tiny_model("gpt2")).save(workdir / "gpt2-lens")
    args = [
        "eval",
        str(tiny_model_dir),
        "--lens",
        str(workdir / "gpt2-lens"),
        "--data",
        str(workdir / "data.txt"),
        "--tokens",
        "32",
        "--seq-len",
        "16",
    ]
    monkeypatch.setattr(sys, "argv", ["tunedlens", *args])
    with pytest.raises(SystemExit) as caught:
        main()
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "unembedding differs" in err
