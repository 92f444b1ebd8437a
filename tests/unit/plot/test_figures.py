"""Trajectory and evaluation figures: panels, labels, offline HTML, PNG, bad paths."""

import json

import numpy as np
import pytest

pytest.importorskip("plotly")
pytest.importorskip("matplotlib")

from tunedlens.engine.stats import TrajectoryStat
from tunedlens.plot import trajectory_figures


def _stat(name="entropy", units="bits"):
    values = np.arange(6, dtype=float).reshape(2, 3)
    labels = [["a", "b", "c"], ["d", "e", "f"]]
    return TrajectoryStat(name, units, values, ["0", "output"], ["x", "y", "z"], labels, labels)


def test_one_heatmap_per_statistic_with_cell_labels():
    figure = trajectory_figures.figure([_stat(), _stat("rank", "rank")], columns=2)
    assert len(figure.data) == 2
    assert [list(row) for row in figure.data[0].text] == [["a", "b", "c"], ["d", "e", "f"]]
    assert figure.data[1].colorscale[0][1] != figure.data[0].colorscale[0][1]  # rank reversed


def test_html_is_self_contained_and_png_is_written(tmp_path):
    html = trajectory_figures.save([_stat()], tmp_path / "fig.html")
    text = html.read_text()
    assert "<script src=" not in text and "plotly" in text.lower()
    png = trajectory_figures.save([_stat()], tmp_path / "fig.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=".html or .png"):
        trajectory_figures.save([_stat()], tmp_path / "fig.pdf")


def test_eval_figures_are_written(tmp_path):
    from tunedlens.plot.eval_figures import save_eval_figures

    metrics = {
        "layers": [0, 1, 2],
        "output_row": 2,
        "model": "m",
        "lenses": {
            name: {
                "kl_bits": [3.0, 1.0, 0.0],
                "entropy_bits": [5.0, 4.0, 3.0],
                "cos_to_final": [0.1, 0.5, 1.0],
            }
            for name in ("logit", "tuned")
        },
    }
    written = save_eval_figures(json.loads(json.dumps(metrics)), tmp_path)
    assert written and all(path.stat().st_size > 0 for path in written)
