"""`tunedlens hub package | verify` on the command line: a tampered byte exits 2 naming the file."""

import sys

import pytest

from tiny_models import random_lens, tiny_model
from tunedlens.cli import main


def _run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["tunedlens", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code or 0
    return code, capsys.readouterr()


def test_package_verify_tamper_on_the_command_line(tmp_path, monkeypatch, capsys):
    model = tiny_model("llama")
    model.config.name_or_path = "org/tiny"
    random_lens(model).save(tmp_path / "my-lens")
    code, out = _run(
        monkeypatch, capsys, "hub", "package", tmp_path / "my-lens", "--out", tmp_path / "tree"
    )
    assert code == 0 and "packaged 1 lens(es)" in out.out
    code, out = _run(monkeypatch, capsys, "hub", "verify", tmp_path / "tree")
    assert code == 0 and "1 lens(es), every file matches" in out.out
    config = tmp_path / "tree" / "lenses" / "org" / "tiny" / "my-lens" / "config.json"
    config.write_text(config.read_text().replace("true", "True ", 1))
    code, out = _run(monkeypatch, capsys, "hub", "verify", tmp_path / "tree")
    assert code == 2 and "my-lens/config.json" in out.err and "Traceback" not in out.err
    code, out = _run(
        monkeypatch, capsys, "hub", "package", tmp_path / "my-lens", "--out", tmp_path / "tree"
    )
    assert code == 2 and "--update" in out.err
    code, out = _run(
        monkeypatch,
        capsys,
        "hub",
        "package",
        tmp_path / "my-lens",
        "--out",
        tmp_path / "t2",
        "--eval",
        "my-lens",
    )
    assert code == 2 and "NAME=DIR" in out.err


@pytest.mark.parametrize("tag", ["2026.11.28", "v26.1.1"])
def test_upload_tag_is_checked_before_anything(tmp_path, monkeypatch, capsys, tag):
    code, out = _run(
        monkeypatch, capsys, "hub", "upload", tmp_path, "org/lenses", "--revision-tag", tag
    )
    assert code == 2 and "vYYYY.MM.DD" in out.err


def test_lens_list_shows_published_jlenses_and_collections(tmp_path, monkeypatch, capsys):
    import json

    model = tiny_model("llama")
    model.config.name_or_path = "org/tiny"
    random_lens(model).save(tmp_path / "my-lens")
    _run(monkeypatch, capsys, "hub", "package", tmp_path / "my-lens", "--out", tmp_path / "tree")
    code, out = _run(
        monkeypatch, capsys, "lens", "list", "org/tiny", "--collection", tmp_path / "tree", "--json"
    )
    assert code == 0
    assert json.loads(out.out) == [
        {
            "source": str(tmp_path / "tree"),
            "model": "org/tiny",
            "kind": "tuned",
            "location": str(tmp_path / "tree" / "lenses" / "org" / "tiny" / "my-lens"),
            "local": "folder",
        }
    ]
    code, out = _run(monkeypatch, capsys, "lens", "list", "qwen/qwen3-8b", "--json")
    assert [row["location"] for row in json.loads(out.out)] == ["jlens:qwen3-8b"]
    code, out = _run(monkeypatch, capsys, "lens", "list", "--json")
    rows = json.loads(out.out)
    jlenses = {row["location"] for row in rows if row["kind"] == "jacobian"}
    tuned = {row["location"] for row in rows if row["kind"] == "tuned"}
    assert len(jlenses) == 37 and all(location.startswith("jlens:") for location in jlenses)
    assert "tuned-lens:EleutherAI/pythia-160m-deduped" in tuned and len(tuned) == 15
    code, out = _run(monkeypatch, capsys, "lens", "list", "GPT2-XL", "--json")  # any case
    (row,) = json.loads(out.out)
    assert row == {
        "source": "AlignmentResearch/tuned-lens (space, unpinned)",
        "model": "gpt2-xl",
        "kind": "tuned",
        "location": "tuned-lens:gpt2-xl",
        "local": "no",
    }
