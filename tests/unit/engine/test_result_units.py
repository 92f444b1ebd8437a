"""A readout says what it holds: units beside every statistic, a short repr, rows in bits."""

import math
import sys

import pytest

import tunedlens
from tiny_models import random_lens, tiny_model
from tunedlens import readout
from tunedlens.errors import MissingExtra
from tunedlens.metrics.divergence import NATS_TO_BITS


@pytest.fixture(scope="module")
def result():
    model = tiny_model("llama")
    ids = [[3, 4, 5, 6, 7], [8, 9, 10]]  # ragged: the second sequence is padded
    return readout(model, {"mine": random_lens(model)}, ids, top_k=2)


def test_units_name_nats_for_information_quantities(result):
    assert result.units == {
        "entropy": "nats",
        "kl": "nats",
        "ce": "nats",
        "max-prob": "probability",
        "rank": "rank",
        "prob": "probability",
    }
    assert result["mine"].units == result.units


def test_repr_summarises_instead_of_dumping_tensors(result):
    text = repr(result)
    assert "tensor(" not in text and len(text) < 400
    assert "lenses mine" in text and "rows 0..output (3)" in text
    assert "batch 2 × 5 positions" in text and "kl [nats]" in text and "top-2" in text
    lens = repr(result["mine"])
    assert "tensor(" not in lens and "2×3×5" in lens and "entropy [nats]" in lens


def test_to_rows_in_bits_with_units_in_the_column_names(result):
    rows = result.to_rows()
    assert len(rows) == (5 + 3) * 3  # real tokens only, every row
    first = rows[0]
    assert {"kl_bits", "entropy_bits", "ce_bits", "max_prob", "rank", "prob"} <= set(first)
    assert not any(key.endswith("_nats") for key in first)
    lens = result["mine"]
    cell = next(r for r in rows if r["batch"] == 1 and r["row_label"] == "1" and r["position"] == 2)
    assert cell["kl_bits"] == pytest.approx(float(lens["kl"][1, 1, 2]) * NATS_TO_BITS)
    assert cell["token_id"] == 10 and cell["target_id"] == -1  # the last token: no next one
    assert math.isnan(cell["ce_bits"]) and cell["rank"] is None
    inner = next(
        r for r in rows if r["batch"] == 1 and r["row_label"] == "1" and r["position"] == 0
    )
    assert inner["rank"] == int(lens["rank"][1, 1, 0]) and isinstance(inner["rank"], int)
    assert inner["target_id"] == 9
    assert cell["top1_id"] == int(lens.top_ids[1, 1, 2, 0])
    assert {r["row_label"] for r in rows} == {"0", "1", "output"}
    nats = result.to_rows(unit="nats")
    assert nats[0]["kl_nats"] == pytest.approx(float(lens["kl"][0, 0, 0]))
    with pytest.raises(ValueError, match="'bits' or 'nats'"):
        result.to_rows(unit="shannons")


def test_to_frame(result, monkeypatch):
    pandas = pytest.importorskip("pandas")
    frame = result.to_frame()
    assert isinstance(frame, pandas.DataFrame) and len(frame) == 24
    assert frame["kl_bits"].tolist() == pytest.approx([r["kl_bits"] for r in result.to_rows()])
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(MissingExtra, match=r"tunedlens\[frame\]"):
        result.to_frame()


def test_dir_lists_the_lazy_exports():
    listed = dir(tunedlens)
    assert set(tunedlens.__all__) <= set(listed)
    assert {"readout", "Lensed", "load_model", "__version__"} <= set(listed)
