import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from paths import DATA
from tiny_models import tiny_model
from tunedlens.cli import main
from tunedlens.cli.app import app
from tunedlens.lenses import LogitLens, TunedLens, read_lens
from tunedlens.predict import parse_layers

runner = CliRunner()


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["tunedlens", *args])
    with pytest.raises(SystemExit) as caught:
        main()
    return caught.value.code, capsys.readouterr()


def test_predict_json(tiny_model_dir):
    result = runner.invoke(app, ["predict", str(tiny_model_dir), "w1 w2 w3", "--json", "-k", "3"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [row["label"] for row in payload["rows"]] == ["0", "1", "output"]
    assert [row["row"] for row in payload["rows"]] == [0, 1, 2]
    top = payload["rows"][-1]["top"]
    assert len(top) == 3 and set(top[0]) == {"token", "id", "prob"}
    assert top[0]["prob"] >= top[1]["prob"] >= top[2]["prob"]
    # The output row is the model's own prediction, and layer rows are the logit lens.
    from tunedlens.models import load_model

    model, tokenizer = load_model(tiny_model_dir)
    ids = tokenizer("w1 w2 w3", return_tensors="pt").input_ids
    with torch.no_grad():
        probs = model(ids).logits[0, -1].softmax(-1)
    assert top[0]["id"] == int(probs.argmax())
    assert top[0]["prob"] == pytest.approx(float(probs.max()), rel=1e-5)
    lens = LogitLens(model)
    from tunedlens.arch import collect_residuals

    hidden = collect_residuals(model, ids).hidden[1][0, -1]
    assert payload["rows"][1]["top"][0]["id"] == int(lens(hidden, 1).argmax())


def test_predict_table_with_a_lens_and_layer_selection(tiny_model_dir, tmp_path):
    from tunedlens.models import load_model

    model, _ = load_model(tiny_model_dir)
    TunedLens.from_model(model).save(tmp_path / "lens")
    result = runner.invoke(
        app,
        [
            "predict",
            str(tiny_model_dir),
            "w5 w6",
            "--lens",
            str(tmp_path / "lens"),
            "--layers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "tuned lens" in result.stdout
    first_cells = [
        line.split()[0] for line in result.stdout.splitlines() if "%" in line and "#" not in line
    ]
    assert first_cells == ["1", "output"]


def test_parse_layers():
    assert parse_layers(None, 30) == list(range(30))
    assert parse_layers("0,5,10", 30) == [0, 5, 10]
    assert parse_layers("4-6,-1", 30) == [4, 5, 6, 29]
    assert parse_layers("0:30:10", 30) == [0, 10, 20]
    with pytest.raises(ValueError, match="out of range"):
        parse_layers("30", 30)
    with pytest.raises(ValueError, match="cannot parse"):
        parse_layers("five", 30)


def test_layer_ranges_say_which_end_is_included():
    # A-B includes B, A:B is a slice that excludes it: the same ten layers.
    assert parse_layers("20-29", 30) == parse_layers("20:30", 30) == list(range(20, 30))
    with pytest.raises(ValueError, match="'A-B' includes B"):
        parse_layers("20-30", 30)
    with pytest.raises(ValueError, match="runs backwards; A-B includes both ends"):
        parse_layers("9-3", 30)
    with pytest.raises(ValueError, match="'A:B' excludes B"):
        parse_layers("5:5", 30)


def test_errors_are_one_line_and_exit_2(monkeypatch, capsys, tiny_model_dir, tmp_path):
    code, out = run_main(monkeypatch, capsys, "predict", str(tiny_model_dir), "")
    last_line = out.err.strip().splitlines()[-1]
    assert code == 2 and last_line == "error: the prompt is empty; pass some text to look at."
    code, out = run_main(
        monkeypatch,
        capsys,
        "predict",
        str(tiny_model_dir),
        "w1",
        "--lens",
        str(tmp_path / "missing"),
    )
    assert code == 2 and "no lens directory at" in out.err and "Traceback" not in out.err
    code, out = run_main(monkeypatch, capsys, "predict", str(tiny_model_dir), "w1 " * 80)
    assert code == 2 and "longer than the model's context of 64" in out.err


def test_lens_info(tmp_path):
    lens_path = DATA / "reference" / "llama" / "lens"
    result = runner.invoke(app, ["lens", "info", str(lens_path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["format"] == "tuned-lens" and info["translator"] == "affine"
    assert info["n_blocks"] == 3 and info["d_model"] == 64 and len(info["rows"]) == 3
    assert [row["label"] for row in info["rows"]] == ["0", "1", "2"]
    assert info["rows"][0]["update_norm"] > 0
    table = runner.invoke(app, ["lens", "info", str(lens_path)])
    assert table.exit_code == 0 and "unembedding sha256" in table.stdout


def test_convert_round_trip(tmp_path):
    source = DATA / "reference" / "llama" / "lens"
    for args in (
        [str(source), str(tmp_path / "native")],
        [str(tmp_path / "native"), str(tmp_path / "back"), "--format", "tuned-lens"],
    ):
        result = runner.invoke(app, ["lens", "convert", *args])
        assert result.exit_code == 0, result.output
    original, native, back = (
        read_lens(p) for p in (source, tmp_path / "native", tmp_path / "back")
    )
    assert native.format == "native" and back.format == "tuned-lens"
    assert torch.equal(original.translator.weight, back.translator.weight)
    assert torch.equal(original.translator.bias, native.translator.bias)
    assert back.model_info["unembed_hash"] == original.model_info["unembed_hash"]


def test_convert_low_rank_with_temperature_refuses(monkeypatch, capsys, tmp_path):
    lens = TunedLens.from_model(tiny_model("llama"), translator="lowrank", use_temperature=True)
    lens.save(tmp_path / "lowrank")
    code, out = run_main(
        monkeypatch,
        capsys,
        "lens",
        "convert",
        str(tmp_path / "lowrank"),
        str(tmp_path / "ref"),
        "--format",
        "tuned-lens",
    )
    assert code == 2 and "temperatures" in out.err
    assert not (tmp_path / "ref" / "params.pt").exists()
