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
def lens_dir(tmp_path, tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    TunedLens.from_model(model).save(tmp_path / "lens")
    return tmp_path / "lens"


def test_show_html_shares_plotly_in_its_folder(tmp_path, tiny_model_dir, lens_dir):
    out = tmp_path / "fig.html"
    args = [
        "show",
        str(tiny_model_dir),
        "w1 w2 w3",
        "--lens",
        str(lens_dir),
        "--stat",
        "all",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "Plotly.newPlot" in html and '<script src="http' not in html
    assert f'<script src="{bundle_name()}">' in html and (tmp_path / bundle_name()).is_file()
    assert f"<title>{tiny_model_dir}: 'w1 w2 w3'</title>" in html
    # Two lenses x four statistics, each panel a heatmap with its cell text and units.
    assert html.count('"hovertemplate":"%{customdata}') == 8
    assert html.count('"showscale":true') == 4  # one colour bar per statistic
    assert f"tuned lens {lens_dir.name}: entropy (bits)" in html
    assert "logit lens: KL to the model (bits)" in html
    assert "w2" in html


def test_show_png_and_compare(tmp_path, tiny_model_dir):
    out = tmp_path / "fig.png"
    result = runner.invoke(
        app, ["show", str(tiny_model_dir), "w1 w2 w3", "--compare", "w1 w9 w3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(out) as image:
        width, height = image.size
    assert image.format == "PNG" and width >= 600 and height >= 300


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["w1", "--stat", "perplexity"], "unknown --stat 'perplexity'"),
        (["", "--out", "x.html"], "empty"),
        (["w1", "--out", "fig.svg"], ".html or .png"),
        (["w1 w2", "--compare", "w1"], "same token length"),
    ],
)
def test_show_bad_input(tiny_model_dir, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["tunedlens", "show", str(tiny_model_dir), *args])
    with pytest.raises(SystemExit) as caught:
        main()
    err = capsys.readouterr().err
    assert caught.value.code == 2 and message in err and err.startswith("error:")


def test_show_takes_several_lenses_side_by_side(tmp_path, tiny_model_dir, lens_dir):
    import shutil

    other = tmp_path / "other-lens"
    shutil.copytree(lens_dir, other)
    out = tmp_path / "three.html"
    result = runner.invoke(
        app,
        [
            "show",
            str(tiny_model_dir),
            "w1 w2 w3",
            "--lens",
            str(lens_dir),
            "--lens",
            str(other),
            "--stat",
            "kl",
            "--out",
            str(out),
            "--plotly",
            "inline",
        ],
    )
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.glob("plotly*.js")) and out.stat().st_size > 3_000_000
    html = out.read_text()
    assert html.count('"hovertemplate":"%{customdata}') == 3
    assert f"tuned lens {other.name}: KL to the model (bits)" in html
