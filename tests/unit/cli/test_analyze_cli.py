"""``tunedlens analyze prune`` and ``analyze detect`` end to end on a tiny model, as a user runs them."""

import json
import sys

import pytest

from tiny_models import random_lens, tiny_model, word_text
from tunedlens.cli import main

pytest.importorskip("sklearn")


def _run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["tunedlens", *map(str, args)])
    with pytest.raises(SystemExit) as caught:
        main()
    out = capsys.readouterr()
    return caught.value.code, out.out, out.err


@pytest.fixture
def texts(tmp_path):
    return word_text(tmp_path / "calibration.txt", 3000), word_text(
        tmp_path / "test.txt", 3000, seed=1
    )


def _fits_80(out: str, paths) -> None:
    """Every line fits 80 columns (but for lines naming a path the user gave)."""
    wide = [line for line in out.splitlines() if len(line) > 80 and str(paths) not in line]
    assert not wide, "\n".join(wide)


def test_prune_writes_its_report(tiny_model_dir, texts, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    random_lens(tiny_model("llama")).save(tmp_path / "lens")
    code, out, err = _run(
        monkeypatch,
        capsys,
        "analyze",
        "prune",
        tiny_model_dir,
        "--data",
        texts[0],
        "--test-data",
        texts[1],
        "--lens",
        tmp_path / "lens",
        "--max-remove",
        "1",
        "--tokens",
        "64",
        "--test-tokens",
        "64",
        "--seq-len",
        "16",
        "--out",
        tmp_path / "prune",
    )
    assert code in (0, None), err
    report = json.loads((tmp_path / "prune" / "prune.json").read_text())
    assert report["data"]["test"] == str(texts[1])
    assert (tmp_path / "prune" / "prune_curves.png").exists()
    assert "wrote the pruning report" in out
    _fits_80(out, tmp_path)
    assert "1 of 2 blocks removed, best first" in out and "Spearman" in out
    methods = [line.split()[0] for line in out.splitlines() if line.strip().startswith("oracle")]
    assert methods == ["oracle"]  # one line per method: nothing wrapped


def test_detect_writes_its_report(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "analyze"))
    from test_detect import _task_file

    task = _task_file(tmp_path / "words.jsonl")
    code, out, err = _run(
        monkeypatch,
        capsys,
        "analyze",
        "detect",
        tiny_model_dir,
        "--task",
        task,
        "--bootstrap",
        "20",
        "--out",
        tmp_path / "detect",
        "--no-plots",
    )
    assert code in (0, None), err
    report = json.loads((tmp_path / "detect" / "detect.json").read_text())
    assert {row["lens"] for row in report["results"]} >= {"logit"}
    assert "wrote the detection report" in out
    _fits_80(out, tmp_path)
    table = [line for line in out.splitlines() if line.split()[:1] in (["logit"], ["states,"])]
    assert len(table) == len(report["results"])  # one line per detector: nothing wrapped
