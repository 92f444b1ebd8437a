"""Trajectory and evaluation figures: shared colour scales, log scales, layout, labels, pages."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("plotly")
pytest.importorskip("matplotlib")

from tunedlens.engine.stats import STATS, TrajectoryStat
from tunedlens.errors import InputError
from tunedlens.outputs import OutputError
from tunedlens.plot import trajectory_figures
from tunedlens.plot.html import bundle_name, write_html

KL = STATS["kl"].title
ENTROPY = STATS["entropy"].title


def _stat(name="entropy", units="bits", values=None):
    values = np.arange(6, dtype=float).reshape(2, 3) if values is None else np.asarray(values)
    labels = [["a", "b", "c"], ["d", "e", "f"]]
    return TrajectoryStat(name, units, values, ["0", "output"], ["x", "y", "z"], labels, labels)


def _visible_bars(figure):
    return [trace for trace in figure.data if trace.showscale]


def test_one_heatmap_per_statistic_with_cell_labels():
    figure = trajectory_figures.figure([_stat(), _stat("rank", "rank")], columns=2)
    assert len(figure.data) == 2
    assert [list(row) for row in figure.data[0].text] == [["a", "b", "c"], ["d", "e", "f"]]
    assert figure.data[1].colorscale[0][1] != figure.data[0].colorscale[0][1]  # rank reversed


def test_panels_of_one_statistic_share_one_colour_scale_and_one_bar():
    small = _stat(ENTROPY, values=[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    large = _stat(ENTROPY, values=[[1.0, 2.0, 3.0], [4.0, 9.0, 12.5]])
    figure = trajectory_figures.figure([small, large], columns=2)
    assert figure.data[0].zmin == figure.data[1].zmin == 0.0
    assert figure.data[0].zmax == figure.data[1].zmax == 12.5
    assert len(_visible_bars(figure)) == 1
    png = trajectory_figures.matplotlib_figure([small, large], columns=2)
    images = [axis.images[0] for axis in png.axes if axis.images]
    assert len(images) == 2 and images[0].get_clim() == images[1].get_clim()
    assert len(png.axes) == 3  # two panels and one colour bar


def test_kl_is_drawn_on_a_log_scale_that_the_colour_bar_names():
    logit = _stat(KL, values=[[150.0, 40.0, 2.0], [0.0, 0.0, 0.0]])
    tuned = _stat(KL, values=[[3.0, 1.0, 0.005], [0.0, 0.0, 0.0]])
    figure = trajectory_figures.figure([logit, tuned], columns=2)
    (bar,) = _visible_bars(figure)
    assert "log scale" in bar.colorbar.title.text and "0.01" in bar.colorbar.title.text
    assert figure.data[0].zmax == figure.data[1].zmax == pytest.approx(math.log10(150))
    assert figure.data[0].zmin == figure.data[1].zmin == pytest.approx(math.log10(0.01))
    assert "100" in bar.colorbar.ticktext and "0.01" in bar.colorbar.ticktext
    # 1 bit sits mid-scale, not at the bottom beside 0 as on a linear 0-150 scale
    z = figure.data[1].z[0][1]
    assert 0.4 < (z - figure.data[1].zmin) / (figure.data[1].zmax - figure.data[1].zmin) < 0.7
    assert "150 bits" in figure.data[0].customdata[0][0]  # hover shows the value, not its log
    linear = trajectory_figures.figure([_stat(ENTROPY)])
    assert "linear" in linear.data[0].colorbar.title.text


def test_every_statistic_row_gets_its_own_colour_bar_beside_it():
    names = [(ENTROPY, "bits"), (KL, "bits"), (STATS["ce"].title, "bits"), ("p", "probability")]
    stats = [_stat(name, units) for name, units in names for _ in range(3)]
    figure = trajectory_figures.figure(stats, columns=3)
    bars = _visible_bars(figure)
    assert len(bars) == 4
    for row, bar in enumerate(bars):
        axis = "yaxis" + str(3 * row + 3)
        low, high = figure.layout[axis].domain
        assert low <= bar.colorbar.y <= high and bar.colorbar.len == pytest.approx(high - low)
        assert bar.colorbar.x > figure.layout["xaxis3"].domain[1]  # right of the last column
    assert len({bar.colorbar.y for bar in bars}) == 4


def test_axes_have_titles_and_punctuation_tokens_are_marked():
    stat = TrajectoryStat(
        ENTROPY,
        "bits",
        np.array([[1.0, np.nan], [2.0, 3.0]]),
        ["0", "output"],
        ["x", "y"],
        [["-", "␣-"], ["Paris", "."]],
    )
    figure = trajectory_figures.figure([stat])
    assert figure.layout.xaxis.title.text and figure.layout.yaxis.title.text
    assert [list(row) for row in figure.data[0].text] == [["‹-›", "␣-"], ["Paris", "‹.›"]]
    assert figure.data[0].z[0][1] is None and "no value" in figure.data[0].customdata[0][1]
    assert figure.layout.plot_bgcolor == trajectory_figures.MISSING_COLOUR
    png = trajectory_figures.matplotlib_figure([stat])
    texts = [text for text in png.axes[0].texts]
    assert {t.get_text() for t in texts} == {"‹-›", "␣-", "Paris", "‹.›"}
    assert min(t.get_fontsize() for t in texts) * png.dpi / 72 >= 14  # pixels high


def test_pages_share_one_plotly_per_folder_and_have_titles(tmp_path):
    first = trajectory_figures.save([_stat()], tmp_path / "a.html", title="first <page>")
    trajectory_figures.save([_stat()], tmp_path / "b.html", title="second")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.html", "b.html", bundle_name()]
    page = first.read_text()
    assert "<title>first &lt;page&gt;</title>" in page
    assert f'<script src="{bundle_name()}"></script>' in page
    assert first.stat().st_size < 200_000 and (tmp_path / bundle_name()).stat().st_size > 3e6

    inline = tmp_path / "inline"
    inline.mkdir()
    trajectory_figures.save([_stat()], inline / "c.html", title="c", plotly="inline")
    assert [p.name for p in inline.iterdir()] == ["c.html"]
    assert (inline / "c.html").stat().st_size > 3e6

    cdn = tmp_path / "cdn"
    cdn.mkdir()
    trajectory_figures.save([_stat()], cdn / "d.html", title="d", plotly="cdn")
    assert [p.name for p in cdn.iterdir()] == ["d.html"]
    text = (cdn / "d.html").read_text()
    assert "https://cdn.plot.ly/plotly-" in text and (cdn / "d.html").stat().st_size < 200_000

    png = trajectory_figures.save([_stat()], tmp_path / "fig.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=".html or .png"):
        trajectory_figures.save([_stat()], tmp_path / "fig.pdf")
    with pytest.raises(InputError, match="unknown --plotly 'offline'; choose one of directory"):
        trajectory_figures.save([_stat()], tmp_path / "e.html", plotly="offline")


def test_a_different_file_under_the_bundle_name_is_never_replaced(tmp_path):
    (tmp_path / bundle_name()).write_text("mine")
    figure = trajectory_figures.figure([_stat()])
    with pytest.raises(OutputError, match="is not this plotly.js"):
        write_html(figure, tmp_path / "a.html", title="a")
    assert (tmp_path / bundle_name()).read_text() == "mine"


def _metrics():
    return {
        "layers": [0, 1, 2, 3],
        "output_row": 3,
        "model": "m",
        "lenses": {
            name: {
                "kl_bits": [150.0, 3.0, 1.0, 0.0] if name == "logit" else [4.0, 1.0, 0.2, 0.0],
                "entropy_bits": [5.0, 4.0, 3.0, 2.0],
                "cos_to_final": [0.1, 0.5, 0.8, 1.0],
            }
            for name in ("logit", "tuned")
        },
        "kpis": {
            "logit": {"first_layer": {"rank_le_10": [2, 2], "rank_le_5": [2, 3], "rank_le_1": [3]}},
            "tuned": {"first_layer": {"rank_le_10": [1, 1], "rank_le_5": [2, 2], "rank_le_1": [2]}},
        },
    }


def test_eval_figures_label_the_output_row_and_draw_kl_on_a_log_axis(tmp_path):
    from tunedlens.plot import eval_figures

    metrics = json.loads(json.dumps(_metrics()))
    written = eval_figures.save_eval_figures(metrics, tmp_path)
    assert sorted(p.name for p in written) == sorted(
        [f"{stem}.{suffix}" for stem in eval_figures.FIGURES for suffix in ("html", "png")]
        + [bundle_name()]
    )
    assert eval_figures.tick_labels(metrics) == ["0", "1", "2", "output"]
    page = (tmp_path / "kl.html").read_text()
    assert "<title>KL(model ‖ lens) by depth · m</title>" in page
    assert '"type":"log"' in page and '"output"' in page
    assert page.count("(median first row)") == 3  # one legend entry per k, not one per lens


def test_eval_crossing_markers_sit_on_each_lens_curve_with_a_legend(tmp_path, monkeypatch):
    from tunedlens.plot import eval_figures

    figures = {}
    original = eval_figures.write_html

    def keep(figure, path, **options):
        figures[path.stem] = figure
        return original(figure, path, **options)

    monkeypatch.setattr(eval_figures, "write_html", keep)
    eval_figures.save_eval_figures(_metrics(), tmp_path)
    kl = figures["kl"]
    assert kl.layout.yaxis.type == "log"
    assert list(kl.layout.xaxis.ticktext)[-1] == "output"
    markers = [t for t in kl.data if t.mode == "markers" and t.x[0] is not None]
    assert len(markers) == 6  # 2 lenses x rank <= 10, 5, 1
    # each marker on its lens's (floored) curve, in that lens's colour
    for trace in markers:
        (curve,) = [c for c in kl.data if c.name == trace.legendgroup and c.mode != "markers"]
        row = trace.x[0]
        assert trace.y[0] == pytest.approx(np.interp(row, curve.x, curve.y))
        assert trace.marker.color == curve.line.color
    legend = [t.name for t in kl.data if t.x[0] is None]
    assert legend == [f"answer rank ≤ {k} (median first row)" for k in (10, 5, 1)]
    assert min(kl.data[0].y) == eval_figures.KL_FLOOR  # the 0 at the output row stays visible
