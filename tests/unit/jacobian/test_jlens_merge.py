"""J-lens merges: parts of one fit only, each prompt once, and metadata that describes the merge."""

import json

import pytest
import torch

from tiny_models import tiny_model, word_text
from tunedlens.commands.fit_jlens import run as run_fit_jlens
from tunedlens.commands.merge import run as run_merge_jlens
from tunedlens.errors import LensMismatch
from tunedlens.jacobian.fit import (
    fit_jacobian_lens,
    merge_jacobian_lenses,
    prompt_slice,
)
from tunedlens.jacobian.merge import MergeError
from tunedlens.lenses.jacobian import JacobianLens


def _prompts(count=6):
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(3, 120, (6,), generator=generator) for _ in range(count)]


def _part(model, index, count, prompts=None, **metadata):
    """Part ``index``/``count`` of the prompts, with the provenance fit-jlens records."""
    prompts = prompts if prompts is not None else _prompts()
    mine = prompt_slice(len(prompts), index, count)
    recorded = {
        "data_content_hash": "ab" * 32,
        "seq_len": 6,
        "seed": 0,
        "packed_prompts": len(prompts),
        "part": f"{index}/{count}",
        "prompt_range": [mine.start, mine.stop],
        **metadata,
    }
    return fit_jacobian_lens(model, prompts[mine], skip_first=2, dim_batch=32, metadata=recorded)


def _without(lens, *keys):
    """``lens`` as a file that does not record ``keys`` would load (an older or published one)."""
    metadata = {key: value for key, value in lens.metadata.items() if key not in keys}
    return JacobianLens(lens.unembed, lens.matrices, n_prompts=lens.n_prompts, metadata=metadata)


def test_the_same_part_twice_is_refused_by_its_prompts_or_its_content(model):
    first = _part(model, 0, 2)
    with pytest.raises(MergeError, match="fitted on the same prompts"):
        merge_jacobian_lenses([first, _part(model, 1, 2), _part(model, 0, 2)])
    old = _without(first, "prompts_hash", "prompt_range", "part")  # files that record none
    with pytest.raises(MergeError, match="holds the same matrices as lens 0"):
        merge_jacobian_lenses([old, _without(first, "prompts_hash", "prompt_range", "part")])
    half = {row: matrix.half() for row, matrix in old.matrices.items()}  # saved as an artifact
    published = JacobianLens(old.unembed, half, n_prompts=old.n_prompts, metadata={})
    with pytest.raises(MergeError, match="the same part given twice"):
        merge_jacobian_lenses([old, published])


def test_overlapping_or_repeated_slices_are_refused(model):
    with pytest.raises(MergeError, match=r"share prompt 2 of the fit.*disjoint --part"):
        merge_jacobian_lenses([_part(model, 0, 2), _part(model, 1, 3)])  # 0..2 and 2..3
    merged = merge_jacobian_lenses([_part(model, 0, 2), _part(model, 2, 3)])  # 0..2 and 4..5
    assert merged.metadata["prompt_ranges"] == [[0, 3], [4, 6]]
    # Older files record --part but no prompt_range: equal slices or other splits are refused.
    other = _prompts(12)[6:]  # other prompts, so neither content nor prompts_hash tell them apart
    same_slice = [
        _without(_part(model, 0, 2), "prompt_range"),
        _without(_part(model, 0, 2, prompts=other), "prompt_range"),
    ]
    with pytest.raises(MergeError, match="are both --part 0/2"):
        merge_jacobian_lenses(same_slice)
    splits = [
        _without(_part(model, 0, 2), "prompt_range"),
        _without(_part(model, 2, 3), "prompt_range"),
    ]
    with pytest.raises(MergeError, match="record no prompt_range"):
        merge_jacobian_lenses(splits)


@pytest.mark.parametrize(
    ("key", "value", "option"),
    [
        ("seq_len", 12, "--seq-len"),
        ("seed", 1, "--seed"),
        ("packed_prompts", 8, "--prompts"),
        ("data_content_hash", "cd" * 32, "--data"),
    ],
)
def test_parts_of_other_data_are_refused(model, key, value, option):
    with pytest.raises(MergeError, match=rf"{key}=.*\[set by {option}") as caught:
        merge_jacobian_lenses([_part(model, 0, 2), _part(model, 1, 2, **{key: value})])
    assert "only --part changed" in str(caught.value)


def test_parts_of_other_estimator_settings_or_rows_are_refused(model):
    first = _part(model, 0, 2)
    prompts = _prompts()[prompt_slice(6, 1, 2)]
    wider = fit_jacobian_lens(model, prompts, skip_first=3, dim_batch=32)
    with pytest.raises(MergeError, match=r"skip_first=2 \(lens 0\) vs skip_first=3 \(lens 1\)"):
        merge_jacobian_lenses([first, wider])
    double = fit_jacobian_lens(tiny_model("llama").double(), prompts, skip_first=2, dim_batch=32)
    with pytest.raises(MergeError, match=r"dtype=.*float32.* vs dtype=.*float64.*--dtype"):
        merge_jacobian_lenses([first, double])
    one_row = fit_jacobian_lens(model, prompts, skip_first=2, dim_batch=32, rows=[1])
    with pytest.raises(MergeError, match=r"has rows \[1\]"):
        merge_jacobian_lenses([first, one_row])
    with pytest.raises(MergeError, match="another model"):
        merge_jacobian_lenses(
            [first, fit_jacobian_lens(tiny_model("llama", seed=9), prompts, skip_first=2)]
        )


def test_files_that_record_less_merge_on_what_they_record(model):
    """Published artifacts record no part or prompts: checked by content and what they record."""
    first, second = _part(model, 0, 2), _part(model, 1, 2)
    bare = [_without(first, *first.metadata), _without(second, "seq_len", "prompts_hash")]
    merged = merge_jacobian_lenses(bare)
    assert merged.n_prompts == 6 and merged.metadata["n_prompts"] == 6
    assert "part" not in merged.metadata and "prompt_ranges" not in merged.metadata  # unknown
    assert [part.get("part") for part in merged.metadata["parts"]] == [None, "1/2"]


def test_merged_metadata_describes_the_merge(model):
    parts = [_part(model, i, 3) for i in range(3)]
    first_two = merge_jacobian_lenses(parts[:2])
    first_two.source = "first-two"
    merged = merge_jacobian_lenses([first_two, parts[2]])
    metadata = merged.metadata
    assert merged.n_prompts == metadata["n_prompts"] == 6 and metadata["skipped_prompts"] == 0
    for key in ("part", "prompt_range", "prompts_hash"):  # no slice or prompts claimed for all
        assert key not in metadata, key
    assert metadata["prompt_ranges"] == [[0, 6]]  # every prompt of the fit, once
    assert [leaf["part"] for leaf in metadata["parts"]] == ["0/3", "1/3", "2/3"]
    assert [leaf["n_prompts"] for leaf in metadata["parts"]] == [2, 2, 2]
    hashes = {part.metadata["prompts_hash"] for part in parts}
    assert {leaf["prompts_hash"] for leaf in metadata["parts"]} == hashes
    assert [leaf["source"] for leaf in metadata["parts"]] == ["lens 0", "lens 1", "lens 1"]
    for key in ("seq_len", "seed", "skip_first", "dtype", "rows", "data_content_hash"):
        assert metadata[key] == parts[0].metadata[key], key  # what the parts share
    whole = fit_jacobian_lens(model, _prompts(), skip_first=2, dim_batch=32)
    for row in whole.rows:
        torch.testing.assert_close(merged.matrices[row], whole.matrices[row], rtol=1e-6, atol=1e-7)
    with pytest.raises(MergeError, match=r"lens 0 \(in first-two\).*same prompts"):
        merge_jacobian_lenses([first_two, parts[0]])


@pytest.fixture
def fitted_parts(tiny_model_dir, tmp_path):
    text = word_text(tmp_path / "text.txt")
    for part in ("0/2", "1/2"):
        run_fit_jlens(
            str(tiny_model_dir),
            tmp_path / f"part{part[0]}",
            data=str(text),
            prompts=4,
            seq_len=12,
            skip_first=2,
            dim_batch=32,
            part=(int(part[0]), 2),
        )
    return tmp_path


def test_run_merge_writes_a_merge_of_every_part(tiny_model_dir, fitted_parts):
    merged = run_merge_jlens(
        str(tiny_model_dir),
        [str(fitted_parts / "part0"), str(fitted_parts / "part1")],
        fitted_parts / "merged",
    )
    metadata = json.loads((fitted_parts / "merged" / "config.json").read_text())["metadata"]
    assert metadata == json.loads(json.dumps(merged.metadata))
    assert "part" not in metadata and metadata["prompt_ranges"] == [[0, 4]]
    assert metadata["packed_prompts"] == 4 and metadata["n_prompts"] == merged.n_prompts == 4
    assert [leaf["part"] for leaf in metadata["parts"]] == ["0/2", "1/2"]
    assert [leaf["prompt_range"] for leaf in metadata["parts"]] == [[0, 2], [2, 4]]


def test_run_merge_refuses_before_the_model_loads(tiny_model_dir, fitted_parts, monkeypatch):
    import shutil

    import tunedlens.models

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(tunedlens.models, "load_model", no_loading)
    shutil.copytree(fitted_parts / "part0", fitted_parts / "copy")
    for parts, message in (
        (["part0", "part0"], "part0 is given twice"),
        (["part0", "copy"], "fitted on the same prompts"),
    ):
        with pytest.raises(MergeError, match=message):
            run_merge_jlens(
                str(tiny_model_dir), [str(fitted_parts / p) for p in parts], fitted_parts / "merged"
            )
    assert not (fitted_parts / "merged").exists()


def test_run_merge_of_parts_of_another_model_names_the_fix(fitted_parts, tmp_path):
    other = tmp_path / "other-model"
    tiny_model("llama", seed=9).save_pretrained(other)
    with pytest.raises(LensMismatch, match="pass as MODEL the model the parts") as caught:
        run_merge_jlens(
            str(other),
            [str(fitted_parts / "part0"), str(fitted_parts / "part1")],
            tmp_path / "merged",
        )
    assert "--no-strict" not in str(caught.value)


def test_read_parts_reads_resolved_parts_without_resolving_them_again(model, tmp_path, monkeypatch):
    import sys

    from tunedlens.jacobian.merge import read_parts
    from tunedlens.lenses.io import locations
    from tunedlens.lenses.io.load import resolve_location

    for index in range(2):
        _part(model, index, 2).save(tmp_path / f"p{index}")
    parts = [str(tmp_path / f"p{index}") for index in range(2)]
    resolved = [resolve_location(part) for part in parts]
    original, calls = locations.lens_dir, []
    for module in list(sys.modules.values()):
        if getattr(module, "lens_dir", None) is original:
            monkeypatch.setattr(
                module, "lens_dir", lambda spec: calls.append(spec) or original(spec)
            )
    stored = read_parts(resolved)
    assert calls == [] and [one.n_prompts for one in stored] == [3, 3]
    read_parts(parts)  # locations as written are resolved, once each
    assert calls == parts
