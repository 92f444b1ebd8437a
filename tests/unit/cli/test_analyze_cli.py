"""``tunedlens analyze`` commands end to end on a tiny model, as a user runs them."""

import json
import sys

import pytest

from tiny_models import random_lens, tiny_model, word_text
from tunedlens.cli import main


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
    pytest.importorskip("sklearn")
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
    pytest.importorskip("sklearn")
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


def test_early_exit_writes_its_report_and_prints_a_narrow_table(
    tiny_model_dir, texts, tmp_path, monkeypatch, capsys
):
    import torch

    from tunedlens.jacobian.fit import fit_jacobian_lens

    model = tiny_model("llama")
    random_lens(model).save(tmp_path / "lens")
    ids = torch.randint(4, 120, (2, 12), generator=torch.Generator().manual_seed(1))
    fit_jacobian_lens(model, ids, skip_first=2).save(tmp_path / "jlens")
    args = ["analyze", "early-exit", tiny_model_dir, "--data", texts[0]]
    args += ["--lens", tmp_path / "lens", "--lens", tmp_path / "jlens"]
    args += ["--tokens", "128", "--seq-len", "32", "--measure", "max-prob", "--measure", "entropy"]
    args += ["--threshold", "max-prob=0,0.5,1", "--check-rows", "0,1", "--delta", "0.1"]
    args += ["--generate", "3", "--prompts", "2", "--prompt-tokens", "8", "--no-plots"]
    code, out, err = _run(monkeypatch, capsys, *args, "--out", tmp_path / "exit")
    assert code in (0, None), err
    report = json.loads((tmp_path / "exit" / "early_exit.json").read_text())
    assert list(report["lenses"]) == ["logit", "lens", "jlens"]
    head, d = report["compute"]["head_macs"], model.config.hidden_size
    # each reading through the J-lens pays its row's d x d map before the head
    assert report["lenses"]["jlens"]["decode_macs"][:2] == [head + d * d] * 2
    assert report["lenses"]["logit"]["decode_macs"][:2] == [head] * 2
    assert report["check_rows"] == [0, 1] and report["calibration"]["deltas"] == [0.1]
    sweep = report["lenses"]["lens"]["measures"]["max-prob"]
    assert sweep["thresholds"] == [0.0, 0.5, 1.0] and sweep["rows_used"][0] == 0.0
    assert set(report["lenses"]["logit"]["measures"]) == {"max-prob", "entropy"}
    assert report["data"]["source"] == str(texts[0]) and report["tokens"] == 4 * 31
    assert len(report["generation"]["prompts"]) == 2
    assert (tmp_path / "exit" / "early_exit_sweep.csv").exists()
    table = out.split("wrote the early-exit report")[0]
    assert "Oracle" in table and "max-prob" in table and "identical" in table
    lines = table.splitlines()
    assert lines[0] == f"Early exit on {tiny_model_dir}"  # a path as long as the user's
    assert max(len(line) for line in lines[1:]) <= 80
    assert "wrote the early-exit report" in out
    # a second run into the same --out is refused, and replaces only our own files with --force
    code, _, err = _run(monkeypatch, capsys, *args, "--out", tmp_path / "exit")
    assert code == 2 and "--force" in err
    code, _, err = _run(monkeypatch, capsys, *args, "--out", tmp_path / "exit", "--force")
    assert code in (0, None), err
