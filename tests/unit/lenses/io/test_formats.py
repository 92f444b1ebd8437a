"""Lens formats: every kind is detected by name and served by the same registries; one loader,
which resolves a location once."""

import ast
import sys
from pathlib import Path

import pytest
import torch

from tunedlens import JacobianLens, TunedLens, load_lens
from tunedlens.jacobian.fit import fit_jacobian_lens
from tunedlens.lenses.io import locations
from tunedlens.lenses.io.formats import (
    CONVERTERS,
    DESCRIBERS,
    FORMATS,
    LOADERS,
    PACKAGERS,
    convert_lens,
    detect_format,
)
from tunedlens.lenses.io.info import describe_lens
from tunedlens.lenses.io.load import resolve_location

SRC = Path(__file__).resolve().parents[4] / "src" / "tunedlens"
JLENS_FILES = ("lenses/jacobian.py", "lenses/io/jlens_files.py", "jacobian/")
"""Where the J-lens may be special-cased: its lens, its files and its fitting."""


@pytest.fixture
def stored(model, lens, input_ids, tmp_path):
    """One lens of every format, by format name."""
    lens.save(tmp_path / "tuned-native")
    lens.save(tmp_path / "tuned-reference", format="tuned-lens")
    jlens = fit_jacobian_lens(model, input_ids, skip_first=2)
    jlens.save(tmp_path / "jlens")
    jlens.save(tmp_path / "artifact.pt", format="artifact")
    published = torch.load(tmp_path / "artifact.pt", weights_only=True)
    sums = {layer: matrix.float() * 3 for layer, matrix in published["J"].items()}
    torch.save({"jacobian_sum": sums, "n_done": 3}, tmp_path / "checkpoint.pt")
    return {
        "native": tmp_path / "tuned-native",
        "tuned-lens": tmp_path / "tuned-reference",
        "jlens-native": tmp_path / "jlens",
        "jlens-artifact": tmp_path / "artifact.pt",
        "jlens-checkpoint": tmp_path / "checkpoint.pt",
    }


def test_every_format_has_an_entry_in_every_registry():
    for registry in (LOADERS, DESCRIBERS, CONVERTERS, PACKAGERS):
        assert set(registry) == set(FORMATS)
    assert set(FORMATS) == {
        "native",
        "tuned-lens",
        "jlens-native",
        "jlens-artifact",
        "jlens-checkpoint",
    }


def test_each_format_is_detected_loaded_described_and_packaged(stored, model):
    for fmt, path in stored.items():
        assert detect_format(path) == fmt
        lens = load_lens(path, model)
        assert isinstance(lens, JacobianLens if fmt.startswith("jlens") else TunedLens)
        assert lens.source == str(path)
        info = describe_lens(path)
        assert info["format"] == fmt and info["path"] == str(path)
        record, files = PACKAGERS[fmt](path)
        assert record["kind"] == lens.kind and files and all(f.is_file() for f in files)
    # A folder holding one artifact (how a collection files it) is that artifact.
    folder = stored["jlens-artifact"].parent / "folder"
    folder.mkdir()
    stored["jlens-artifact"].rename(folder / "lens.pt")
    assert detect_format(folder) == "jlens-artifact"


def test_a_checkpoint_loads_as_the_mean_of_its_sums(stored, model):
    artifact = load_lens(stored["jlens-artifact"], model)
    checkpoint = load_lens(stored["jlens-checkpoint"], model)
    assert checkpoint.rows == artifact.rows and artifact.rows
    for row in artifact.rows:
        torch.testing.assert_close(checkpoint.matrices[row], artifact.matrices[row].float())


WRITTEN = {
    ("tuned", "native"): "native",
    ("tuned", "tuned-lens"): "tuned-lens",
    ("jlens", "native"): "jlens-native",
    ("jlens", "artifact"): "jlens-artifact",
}
"""(kind converted, ``--format``) -> the format the converted files hold."""


def test_converters_write_the_formats_they_name(stored, tmp_path):
    for fmt, path in stored.items():
        kind = "jlens" if fmt.startswith("jlens") else "tuned"
        for target_format in CONVERTERS[fmt].targets:
            name = "lens.pt" if target_format == "artifact" else target_format
            target = tmp_path / "converted" / fmt / name
            target.parent.mkdir(parents=True, exist_ok=True)
            assert convert_lens(path, target, target_format) == target
            assert detect_format(target) == WRITTEN[kind, target_format]


def _special_cases() -> list[str]:
    """Every call of ``jlens_file`` (or import of it) outside the J-lens's own files."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith(JLENS_FILES):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name == "jlens_file":
                    found.append(f"{rel}:{node.lineno} calls jlens_file")
            elif isinstance(node, ast.ImportFrom) and any(
                a.name == "jlens_file" for a in node.names
            ):
                found.append(f"{rel}:{node.lineno} imports jlens_file")
    return found


def test_no_jlens_special_case_outside_the_jlens_files():
    assert not _special_cases(), "\n".join(_special_cases())


def test_the_special_case_check_sees_a_call(tmp_path, monkeypatch):
    """The source scan above finds what it looks for (so its silence means something)."""
    tree = tmp_path / "tunedlens"
    (tree / "view").mkdir(parents=True)
    (tree / "view" / "x.py").write_text("from a import jlens_file\n\nif jlens_file(p):\n    pass\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tree)
    assert _special_cases() == ["view/x.py:1 imports jlens_file", "view/x.py:3 calls jlens_file"]


@pytest.mark.parametrize("fmt", ["native", "jlens-native", "jlens-artifact"])
def test_a_location_is_resolved_once_per_load(stored, model, monkeypatch, fmt):
    original, calls = locations.lens_dir, []

    def counted(spec):
        calls.append(spec)
        return original(spec)

    # Wherever lens_dir was imported, the counting one stands in for it.
    for module in list(sys.modules.values()):
        if getattr(module, "lens_dir", None) is original:
            monkeypatch.setattr(module, "lens_dir", counted)
    load_lens(str(stored[fmt]), model)
    assert calls == [str(stored[fmt])]
    calls.clear()
    load_lens(resolve_location(str(stored[fmt])), model)  # resolved before: not again
    assert len(calls) == 1


def test_detect_format_refuses_what_holds_no_lens(tmp_path):
    from tunedlens.errors import LensFileError

    with pytest.raises(LensFileError, match="does not exist"):
        detect_format(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LensFileError, match="holds no lens"):
        detect_format(tmp_path / "empty")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(LensFileError, match="not a J-lens artifact"):
        detect_format(tmp_path / "other.pt")
