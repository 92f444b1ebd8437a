"""What the commands print fits an 80-column terminal: no table row wraps, titles are one line.

Each table is rendered as a user's terminal would (``COLUMNS=80``); a row that wrapped would show
as a line holding only the continuation of a cell, which these tests look for.
"""

import json
import re
import sys

import pytest
import torch
from typer.testing import CliRunner

from tiny_models import random_lens, tiny_model
from tunedlens.cli import main
from tunedlens.cli.app import app
from tunedlens.cli.tables import percent, predict_table
from tunedlens.commands.predict import PredictRun
from tunedlens.predict import LayerPrediction, TokenProb

runner = CliRunner()
NARROW = {"COLUMNS": "80"}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _fits(text: str, width: int = 80, paths: str = "/tmp/") -> None:
    """No line is wider than ``width``, but for those naming a path the user gave (no break)."""
    too_wide = [line for line in text.splitlines() if len(line) > width and paths not in line]
    assert not too_wide, "\n".join(too_wide)


def _render(table, width: int = 80) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(table)
    return console.export_text()


def test_predict_table_keeps_each_token_beside_its_probability():
    long = " internationalisation"
    rows = [
        LayerPrediction(
            row,
            label,
            [TokenProb(long, 5, 0.61), TokenProb(" Paris", 7, 0.2)]
            + [TokenProb(f" w{i}", i, 0.001) for i in range(3)],
        )
        for row, label in enumerate(["0", "1", "29", "output"])
    ]
    run = PredictRun("a/very-long-model-name" * 3, "prompt", "logit", -1, rows)
    text = _render(predict_table(run))
    _fits(text)
    body = [line for line in _lines(text) if re.match(r"\s*(\d+|output)\s", line)]
    assert len(body) == 4  # one line per row: nothing wrapped onto a second line
    assert all("61%" in line and "␣Paris 20%" in line and "<1%" in line for line in body)
    assert "␣intern… 61%" in body[0]  # shortened, not wrapped
    title = _lines(text)[0]
    assert "logit lens" in title and "position -1" in title
    # A wide terminal shows the whole token.
    assert "␣internationalisation 61%" in _render(predict_table(run, width=160), 160)


def test_tokens_that_look_like_markup_print_as_written():
    top = [TokenProb("[/INST]", 1, 0.5), TokenProb("[bold]", 2, 0.25)]
    run = PredictRun("[red]model", "p", "logit", -1, [LayerPrediction(0, "output", top)])
    text = _render(predict_table(run))
    assert "[/INST] 50%" in text and "[bold] 25%" in text and "[red]model" in text


def test_percent():
    assert [percent(p) for p in (0.773, 0.03, 0.004, 0.0, 1.0)] == [
        "77%",
        "3%",
        "<1%",
        "0%",
        "100%",
    ]


def test_predict_at_80_columns(tiny_model_dir):
    result = runner.invoke(app, ["predict", str(tiny_model_dir), "w1 w2 w3", "-k", "6"], env=NARROW)
    assert result.exit_code == 0, result.output
    _fits(result.stdout)
    body = [line for line in _lines(result.stdout) if re.match(r"\s*(\d+|output)\s", line)]
    assert [line.split()[0] for line in body] == ["0", "1", "output"]
    assert all(line.count("%") == 6 for line in body)


def _saved_lenses(tmp_path):
    model = tiny_model("llama")
    model.config.name_or_path = "demo"
    lens = random_lens(model)
    training = {
        "model_spec": "demo",
        "model_source": {
            "model_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "quantisation": "Q4_1 GGUF, dequantised to float32",
        },
        "data": "kjv",
        "data_content_hash": "ab" * 32,
        "train_tokens": 16384,
        "trained_tokens": 16384,
        "val_tokens": 4096,
        "config": {"recipe": "default", "objective": "kl", "optimizer": "adam", "lr": 0.001},
        "val_kl_bits": [1.0, 2.0],
    }
    lens.save(tmp_path / "tuned", provenance={"training": training})
    return model


def test_lens_info_shows_key_lines_not_the_whole_record(tmp_path):
    _saved_lenses(tmp_path)
    result = runner.invoke(app, ["lens", "info", str(tmp_path / "tuned")], env=NARROW)
    assert result.exit_code == 0, result.output
    _fits(result.stdout)
    text = result.stdout
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in text and "Q4_1" in text
    assert "16,384 trained" in text and "kjv" in text and "recipe" in text
    assert "default: kl objective, adam, lr 0.001" in text
    assert "unembedding sha256" in text and "--json" in text
    assert '"training"' not in text and "val_kl_bits" not in text  # no JSON dump in a cell
    facts = [line for line in text.splitlines() if line.startswith("│")]
    assert len(facts) < 20
    assert "‖bias‖" in text  # an affine lens has biases
    full = json.loads(
        runner.invoke(app, ["lens", "info", str(tmp_path / "tuned"), "--json"]).stdout
    )
    assert full["provenance"]["training"]["val_kl_bits"] == [1.0, 2.0] and full["kind"] == "tuned"


def test_jlens_info_has_no_bias_column_and_one_title(tmp_path):
    from tunedlens.jacobian.fit import fit_jacobian_lens

    model = tiny_model("llama")
    ids = torch.randint(3, 120, (1, 8), generator=torch.Generator().manual_seed(0))
    fit_jacobian_lens(model, ids, skip_first=2, metadata={"model": "demo"}).save(tmp_path / "j")
    result = runner.invoke(app, ["lens", "info", str(tmp_path / "j")], env=NARROW)
    assert result.exit_code == 0, result.output
    _fits(result.stdout)
    assert "‖bias‖" not in result.stdout and "bias_norm" not in result.stdout
    assert "size per row: Frobenius norm of J − I" in result.stdout
    assert "(Frobenius)" not in result.stdout and "Jacobian lens" in result.stdout
    info = json.loads(runner.invoke(app, ["lens", "info", str(tmp_path / "j"), "--json"]).stdout)
    assert all(set(row) == {"row", "label", "update_norm"} for row in info["rows"])


def test_lens_info_logit_describes_the_logit_lens():
    result = runner.invoke(app, ["lens", "info", "logit"], env=NARROW)
    assert result.exit_code == 0, result.output
    _fits(result.stdout)
    assert "the logit lens" in result.stdout and "final norm" in result.stdout
    info = json.loads(runner.invoke(app, ["lens", "info", "logit", "--json"]).stdout)
    assert info["kind"] == "logit" and info["parameters"] == 0 and info["rows"] == []


def test_lens_list_fits_and_says_what_is_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _saved_lenses(tmp_path)
    (tmp_path / "a-model").mkdir()  # a model's config.json is no lens
    (tmp_path / "a-model" / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    result = runner.invoke(app, ["lens", "list"], env=NARROW)
    assert result.exit_code == 0, result.output
    _fits(result.stdout)
    lines = result.stdout.splitlines()
    # Every published lens on one line, whole (nothing folded onto the next line).
    for location in ("tuned-lens:EleutherAI/pythia-1.4b-deduped", "jlens:llama3.3-70b-it"):
        (line,) = [line for line in lines if location in line]
        assert re.search(r"(no|cached) \[\d\]", line)
    assert "jlens:llama3.3-70b-it (meta-llama/Llama-3.3-70B-Instruct)" in result.stdout
    # A lens published under two hub names of one model is one line naming both.
    (line,) = [line for line in lines if "jlens:gpt2-small" in line]
    assert "(gpt2, openai-community/gpt2)" in line
    assert lines[-1].rstrip().endswith("[n]: source")
    (line,) = [line for line in lines if "./tuned" in line]
    assert "folder [1]" in line and "tuned" in line
    assert "a-model" not in result.stdout


def test_lens_list_demo_finds_lenses_trained_in_this_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _saved_lenses(tmp_path)
    for name in ("demo", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        result = runner.invoke(app, ["lens", "list", name, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == [
            {
                "source": f"this folder ({tmp_path.resolve()})",
                "model": "demo",
                "kind": "tuned",
                "location": "./tuned",
                "local": "folder",
            }
        ]
    nothing = runner.invoke(app, ["lens", "list", "org/other"])
    assert "no known lens for 'org/other' in this folder" in nothing.stdout


def test_eval_prints_80_column_tables_and_warns_when_worse_than_logit(
    tiny_model_dir, text_file, tmp_path
):
    from tunedlens.models import load_model

    model, _ = load_model(tiny_model_dir)
    random_lens(model, scale=0.5).save(tmp_path / "noisy")
    result = runner.invoke(
        app,
        [
            "eval",
            str(tiny_model_dir),
            "--lens",
            str(tmp_path / "noisy"),
            "--data",
            str(text_file),
            "--tokens",
            "128",
            "--seq-len",
            "32",
            "--bootstrap",
            "0",
            "--prompts",
            "none",
            "--no-plots",
            "--out",
            str(tmp_path / "report"),
        ],
        env=NARROW,
    )
    assert result.exit_code == 0, result.output
    _fits(result.stdout)
    assert "KL(model ‖ lens) in bits" in result.stdout and "top-1 agreement" in result.stdout
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    gate = metrics["gates"]["noisy"]["E"]
    logit, noisy = metrics["lenses"]["logit"], metrics["lenses"]["noisy"]
    worse = [
        label
        for i, label in enumerate(metrics["row_labels"][:-1])
        if noisy["top1_agree"][i] < logit["top1_agree"][i] - 0.01
    ]
    assert gate["rows_worse_top1"] == worse and worse  # a noisy lens loses somewhere
    assert not gate["pass"] and "E FAIL" in result.stdout
    assert metrics["warnings"] and "worse than the logit lens" in metrics["warnings"][0]
    assert "warning: noisy is worse than the logit lens" in result.stderr
    assert "Warning: noisy is worse" in (tmp_path / "report" / "summary.md").read_text()


def test_version(monkeypatch, capsys):
    from importlib import metadata

    import transformers

    monkeypatch.setattr(sys, "argv", ["tunedlens", "--version"])
    with pytest.raises(SystemExit) as caught:
        main()
    out = capsys.readouterr().out
    assert caught.value.code == 0
    assert out.startswith(f"tunedlens {metadata.version('tunedlens')} (torch {torch.__version__}")
    assert f"transformers {transformers.__version__}" in out


def test_the_demo_is_recorded_as_the_model_it_is(tiny_model_dir, text_file, tmp_path, monkeypatch):
    """A lens made on ``demo`` records SmolLM2-135M-Instruct and its Q4_1 quantisation."""
    import tunedlens.commands.train as train_command
    import tunedlens.models as models

    real = models.load_model

    def as_demo(spec, **options):  # the tiny model standing in for the embedded one
        model, tokenizer = real(tiny_model_dir, **options)
        model.config.name_or_path = spec
        return model, tokenizer

    monkeypatch.setattr(models, "load_model", as_demo)
    monkeypatch.setattr(train_command, "load_model", as_demo)
    monkeypatch.chdir(tmp_path)
    demo = models.model_origin("demo")
    assert demo["model_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "Q4_1" in demo["quantisation"] and demo["file"] == models.DEMO_FILE
    common = ["--data", str(text_file)]
    fit = ["--prompts", "1", "--seq-len", "12", "--skip-first", "2", "--out", "jdemo"]
    fitted = runner.invoke(app, ["fit-jlens", "demo", *common, *fit])
    assert fitted.exit_code == 0, fitted.output
    train = ["--out", "tdemo", "--tokens", "128", "--seq-len", "16", "--batch-size", "4"]
    train += ["--tokens-per-step", "64", "--val-tokens", "64"]
    trained = runner.invoke(app, ["train", "demo", *common, *train])
    assert trained.exit_code == 0, trained.output
    config = json.loads((tmp_path / "jdemo" / "config.json").read_text())
    provenance = json.loads((tmp_path / "tdemo" / "provenance.json").read_text())
    assert config["metadata"]["model_source"] == demo == provenance["training"]["model_source"]
    for lens in ("jdemo", "tdemo"):
        info = runner.invoke(app, ["lens", "info", lens], env=NARROW).stdout
        assert "demo = HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF" in info
    listed = json.loads(runner.invoke(app, ["lens", "list", "demo", "--json"]).stdout)
    assert [(row["location"], row["kind"]) for row in listed] == [
        ("./jdemo", "jacobian"),
        ("./tdemo", "tuned"),
    ]
    assert models.model_origin(tiny_model_dir) is None
