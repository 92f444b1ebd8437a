"""Tuned lenses on sub-layer points (``--points mid|both``): identity when untrained, files that
keep their points, training on several families, and the CLI (train, predict, show, eval)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from tiny_models import tiny_model
from tunedlens.arch import collect_residuals
from tunedlens.arch.points import row_label
from tunedlens.cli.app import app
from tunedlens.engine import layer_kl, readout
from tunedlens.errors import LensFileError, LensMismatch
from tunedlens.lenses import LogitLens, TunedLens, read_lens
from tunedlens.lenses.io.load import align_points, load_lens
from tunedlens.train import recipe_config, train_lens

runner = CliRunner()
ARGS = ["--seq-len", "16", "--batch-size", "4", "--tokens-per-step", "64", "--val-tokens", "64"]


def _perturbed(model, points):
    lens = TunedLens.from_model(model, points=points)
    with torch.no_grad():
        lens.translator.weight.add_(torch.randn_like(lens.translator.weight) * 0.05)
    return lens


@pytest.mark.parametrize("points", ["mid", "both"])
def test_untrained_equals_the_logit_lens_at_the_same_points(model, input_ids, points):
    tuned, logit = TunedLens.from_model(model, points=points), LogitLens(model, points=points)
    assert tuned.translator.n_rows == tuned.output_row == (2 if points == "mid" else 4)
    states = collect_residuals(model, input_ids, points=points)
    for row in range(tuned.output_row + 1):
        assert torch.equal(tuned(states.hidden[row], row), logit(states.hidden[row], row))


def test_files_keep_their_points(model, input_ids, tmp_path):
    lens = _perturbed(model, "both")
    lens.save(tmp_path / "lens")
    config = json.loads((tmp_path / "lens" / "config.json").read_text())
    assert config["points"] == "both" and config["n_rows"] == 4
    loaded = load_lens(tmp_path / "lens", model)
    assert loaded.points == "both" and row_label(loaded.points, 3, loaded.n_blocks) == "1.mid"
    first = readout(model, lens, input_ids, stats=("kl",))["tuned"]["kl"]
    again = readout(model, loaded, input_ids, stats=("kl",))["tuned"]["kl"]
    assert torch.equal(first, again)
    # Block lenses keep the config they always had (no "points" key).
    TunedLens.from_model(model).save(tmp_path / "block")
    assert "points" not in json.loads((tmp_path / "block" / "config.json").read_text())
    assert read_lens(tmp_path / "block").points == "block"


def test_the_reference_format_refuses_sublayer_lenses(model, tmp_path):
    with pytest.raises(LensFileError, match="one translator per block input"):
        _perturbed(model, "mid").save(tmp_path / "ref", format="tuned-lens")
    assert not (tmp_path / "ref").exists()


def test_a_damaged_points_entry_is_refused(model, tmp_path):
    _perturbed(model, "mid").save(tmp_path / "lens")
    config_path = tmp_path / "lens" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "points": "post"}))
    with pytest.raises(LensFileError, match="'points' must be one of block, mid, both"):
        read_lens(tmp_path / "lens")
    config_path.write_text(json.dumps({**config, "points": "both"}))  # 2 translators: 1 block?
    with pytest.raises(LensMismatch, match="2 both points vs the model's 4"):
        load_lens(tmp_path / "lens", model)


def test_logit_lenses_follow_the_trained_lens_and_mixed_points_are_refused(model):
    logit = LogitLens(model)
    named = align_points(
        {"logit": logit, "tuned": TunedLens.from_model(model, points="mid")}, model
    )
    assert named["logit"].points == "mid" and named["logit"].unembed is logit.unembed
    assert logit.points == "block"  # the given lens is not changed
    with pytest.raises(ValueError, match="tuned reads 'mid'; --points asks for 'both'"):
        align_points(named, model, "both")
    with pytest.raises(ValueError, match="different points"):
        align_points(
            {"a": TunedLens.from_model(model), "b": TunedLens.from_model(model, points="mid")},
            model,
        )


@pytest.mark.parametrize(
    ("model_type", "points"), [("llama", "mid"), ("gemma2", "both"), ("olmo2", "mid")]
)
def test_sublayer_lenses_train_and_lower_held_out_kl(model_type, points):
    model = tiny_model(model_type, initializer_range=0.2, logit_gain=3.0)
    data = torch.randint(3, 120, (72, 16), generator=torch.Generator().manual_seed(0))
    config = recipe_config(
        "default",
        points=points,
        tokens=16 * 64,
        tokens_per_step=16 * 8,
        seq_len=16,
        batch_size=4,
        lr=1e-2,
        lstsq_init=False,
    )
    lens = TunedLens.from_model(model, points=points)
    result = train_lens(lens, model, data[:64], config)
    assert (
        result.lens.points == points
        and len(result.val_kl or [0] * lens.output_row) == lens.output_row
    )
    before = layer_kl(LogitLens(model, points=points), model, data[64:])
    after = layer_kl(result.lens, model, data[64:])
    assert before.shape == after.shape == (lens.output_row,)
    assert after.mean() < before.mean() and (after >= 0).all()


def test_cli_train_both_then_predict_show_and_eval(tiny_model_dir, text_file, tmp_path):
    text = text_file
    out = tmp_path / "lens"
    result = runner.invoke(
        app,
        [
            "train",
            str(tiny_model_dir),
            "--data",
            str(text),
            "--out",
            str(out),
            "--tokens",
            "256",
            "--points",
            "both",
            *ARGS,
        ],
    )
    assert result.exit_code == 0, result.output
    stored = read_lens(out)
    assert stored.points == "both" and stored.translator.n_rows == 4
    assert (
        json.loads((out / "provenance.json").read_text())["training"]["config"]["points"] == "both"
    )

    result = runner.invoke(
        app,
        ["predict", str(tiny_model_dir), "w1 w2 w3", "--json", "--lens", str(out), "--layers", "1"],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [row["label"] for row in rows] == ["1", "1.mid", "output"] and [
        row["row"] for row in rows
    ] == [2, 3, 4]
    result = runner.invoke(
        app, ["predict", str(tiny_model_dir), "w1 w2 w3", "--json", "--points", "mid"]
    )
    assert [row["label"] for row in json.loads(result.stdout)["rows"]] == [
        "0.mid",
        "1.mid",
        "output",
    ]
    result = runner.invoke(
        app, ["predict", str(tiny_model_dir), "w1 w2", "--lens", str(out), "--points", "mid"]
    )
    assert result.exit_code != 0 and "different points" in str(result.exception)

    figure = tmp_path / "both.html"
    result = runner.invoke(
        app, ["show", str(tiny_model_dir), "w1 w2 w3 w4", "--lens", str(out), "--out", str(figure)]
    )
    assert result.exit_code == 0, result.output
    page = figure.read_text()
    assert '"1.mid"' in page and '"0.mid"' in page  # interleaved rows, for both lenses

    report = tmp_path / "eval"
    result = runner.invoke(
        app,
        [
            "eval",
            str(tiny_model_dir),
            "--lens",
            str(out),
            "--data",
            str(text),
            "--tokens",
            "128",
            "--seq-len",
            "16",
            "--out",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["points"] == "both" and metrics["row_labels"] == [
        "0",
        "0.mid",
        "1",
        "1.mid",
        "output",
    ]
    assert metrics["n_blocks"] == 2 and metrics["output_row"] == 4 and "n_layers" not in metrics
    assert len(metrics["lenses"]["logit"]["kl_bits"]) == 5


def test_cli_refuses_mid_points_of_parallel_blocks_before_packing(tiny_tokenizer, tmp_path):
    path = tmp_path / "tiny-gptj"
    tiny_model("gptj").save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    missing = tmp_path / "nothing-packed.txt"
    missing.write_text("w1 w2 w3")  # far too little text: packing would fail if it ran first
    result = runner.invoke(
        app,
        [
            "train",
            str(path),
            "--data",
            str(missing),
            "--out",
            str(tmp_path / "o"),
            "--tokens",
            "256",
            "--points",
            "mid",
            *ARGS,
        ],
    )
    assert result.exit_code != 0
    assert "parallel" in str(result.exception) and "--points block" in str(result.exception)
