"""Lens collections: package -> verify -> tamper -> verify fails; hub locations and downloads
from a hand-made HF cache (HF_HUB_OFFLINE); upload refuses without a token and makes one commit."""

import json
import shutil
from typing import ClassVar

import pytest
import torch

from tiny_models import random_lens, tiny_model
from tunedlens.hub.collection import package_lenses, verify_collection
from tunedlens.hub.publish import download_collection, upload_collection
from tunedlens.jacobian.fit import fit_jacobian_lens
from tunedlens.lenses import load_lens
from tunedlens.lenses.io.index import CollectionError

MODEL_ID = "org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def model():
    model = tiny_model("llama")
    model.config.name_or_path = MODEL_ID
    return model


@pytest.fixture
def lenses(model, tmp_path):
    """A tuned lens, a J-lens and an evaluation report of the tuned lens."""
    random_lens(model).save(tmp_path / "in" / "tuned")
    ids = torch.randint(4, 120, (2, 12), generator=torch.Generator().manual_seed(0))
    fit_jacobian_lens(model, ids, skip_first=2).save(tmp_path / "in" / "jlens")
    report = tmp_path / "in" / "report"
    report.mkdir()
    metrics = {
        "tokens": 64,
        "lenses": {"logit": {"kl_bits": [3.0, 2.0]}, "tuned": {"kl_bits": [1.0, 0.5]}},
        "gates": {"tuned": {"A": {"pass": True}, "B": {"pass": False}}},
    }
    (report / "metrics.json").write_text(json.dumps(metrics))
    return [tmp_path / "in" / "tuned", tmp_path / "in" / "jlens"], {"tuned": report}


def _tree_bytes(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_package_verify_tamper(lenses, tmp_path, model):
    dirs, evals = lenses
    tree = package_lenses(dirs, tmp_path / "tree", evals=evals)
    index = verify_collection(tree)
    tuned = index["lenses"][f"lenses/{MODEL_ID}/tuned"]
    assert tuned["kind"] == "tuned" and tuned["metrics"]["mean_kl_bits"] == 0.75
    assert tuned["metrics"]["gates"] == {"A": True, "B": False}
    assert set(tuned["files"]) == {
        "config.json",
        "lens.safetensors",
        "provenance.json",
        "README.md",
        "eval/metrics.json",
    }
    assert index["lenses"][f"lenses/{MODEL_ID}/jlens"]["kind"] == "jacobian"
    card = (tree / "README.md").read_text()
    assert (
        card.startswith("---\nlicense: apache-2.0")
        and "| `org/tiny-llama` | `tuned` | tuned | 0.750 | A✓ B✗ |" in card
    )
    # Deterministic: the same inputs give a byte-identical tree.
    again = package_lenses(dirs, tmp_path / "again", evals=evals)
    assert _tree_bytes(again) == _tree_bytes(tree)
    # Collections load like any lens directory.
    assert load_lens(tree / "lenses" / MODEL_ID / "jlens", model).kind == "jacobian"

    weights = tree / "lenses" / MODEL_ID / "tuned" / "lens.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one byte
    weights.write_bytes(bytes(data))
    with pytest.raises(CollectionError, match=r"tuned/lens.safetensors does not match its sha256"):
        verify_collection(tree)
    weights.unlink()
    with pytest.raises(
        CollectionError, match="lens.safetensors is listed in INDEX.json but missing"
    ):
        verify_collection(tree)
    (again / "lenses" / MODEL_ID / "jlens" / "notes.txt").write_text("extra")
    with pytest.raises(CollectionError, match="jlens/notes.txt is in the tree but not listed"):
        verify_collection(again)


def test_package_bad_input(lenses, tmp_path, model):
    dirs, evals = lenses
    shutil.copytree(dirs[0], tmp_path / "elsewhere" / "tuned")
    with pytest.raises(
        CollectionError, match="two lenses would be packaged at lenses/org/tiny-llama/tuned"
    ):
        package_lenses([dirs[0], tmp_path / "elsewhere" / "tuned"], tmp_path / "t1")
    with pytest.raises(CollectionError, match="not among the packaged lenses"):
        package_lenses(dirs[1:], tmp_path / "t2", evals=evals)
    tree = package_lenses(dirs[:1], tmp_path / "t3")
    with pytest.raises(CollectionError, match="--update"):
        package_lenses(dirs[1:], tree)
    package_lenses(dirs[1:], tree, update=True)
    assert len(verify_collection(tree)["lenses"]) == 2
    index = json.loads((tree / "INDEX.json").read_text())
    index["lenses"][f"lenses/{MODEL_ID}/tuned"]["model"] = "org/other"
    (tree / "INDEX.json").write_text(json.dumps(index))
    with pytest.raises(
        CollectionError,
        match="filed under 'org/tiny-llama' but the index says its model is 'org/other'",
    ):
        verify_collection(tree)
    nameless = tiny_model("llama", seed=2)
    nameless.config.name_or_path = ""
    random_lens(nameless).save(tmp_path / "nameless")
    with pytest.raises(CollectionError, match="records no model id"):
        package_lenses([tmp_path / "nameless"], tmp_path / "t4")


def _publish_to_cache(tree, cache, repo_id="someone/lenses"):
    folder = cache / f"datasets--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    shutil.copytree(tree, folder / "snapshots" / COMMIT)
    return folder / "snapshots" / COMMIT


def test_collection_locations_and_downloads_offline(lenses, tmp_path, hub_cache, model):
    dirs, evals = lenses
    tree = package_lenses(dirs, tmp_path / "tree", evals=evals)
    with pytest.raises(CollectionError, match="not in the local Hugging Face cache"):
        download_collection("someone/lenses")
    cached = _publish_to_cache(tree, hub_cache)
    spec = f"hf:datasets/someone/lenses/lenses/{MODEL_ID}"
    assert load_lens(f"{spec}/tuned", model).kind == "tuned"
    assert load_lens(f"{spec}/jlens@main", model).kind == "jacobian"
    assert download_collection("someone/lenses") == cached
    out = download_collection("someone/lenses", model=MODEL_ID, out=tmp_path / "copy")
    assert verify_collection(out)["lenses"].keys() == verify_collection(tree)["lenses"].keys()
    with pytest.raises(CollectionError, match="no lens for 'org/none'"):
        download_collection("someone/lenses", model="org/none")
    weights = cached / "lenses" / MODEL_ID / "tuned" / "lens.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(CollectionError, match="does not match its sha256"):
        load_lens(f"{spec}/tuned", model)
    with pytest.raises(CollectionError, match="does not match its sha256"):
        download_collection("someone/lenses", model=MODEL_ID)


class RecordingApi:
    calls: ClassVar[list] = []

    def __init__(self, token=None):
        self.calls.append(("token", token))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs["repo_type"]))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs["repo_type"]))

        class Commit:
            oid, commit_url = "c0ffee", "https://huggingface.co/datasets/org/lenses/commit/c0ffee"

        return Commit()

    def create_tag(self, repo_id, **kwargs):
        self.calls.append(("create_tag", kwargs["tag"], kwargs["revision"]))


def test_upload_needs_a_token_and_makes_one_tagged_commit(lenses, tmp_path, monkeypatch):
    import huggingface_hub

    dirs, _ = lenses
    tree = package_lenses(dirs, tmp_path / "tree")
    RecordingApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(CollectionError, match="no Hugging Face token.*Nothing was uploaded"):
        upload_collection(tree, "org/lenses", revision_tag="v2026.11.28")
    with pytest.raises(CollectionError, match="vYYYY.MM.DD"):
        upload_collection(tree, "org/lenses", revision_tag="latest", token="t")
    assert RecordingApi.calls == []
    url = upload_collection(tree, "org/lenses", revision_tag="v2026.11.28", token="t")
    assert url.endswith("c0ffee")
    assert [c[0] for c in RecordingApi.calls] == [
        "token",
        "create_repo",
        "upload_folder",
        "create_tag",
    ]
    assert RecordingApi.calls[-1] == ("create_tag", "v2026.11.28", "c0ffee")


def test_verify_follows_folder_links(lenses, tmp_path):
    dirs, evals = lenses
    tree = package_lenses(dirs[:1], tmp_path / "tree", evals=evals)
    lens = tree / "lenses" / MODEL_ID / "tuned"
    # A linked folder whose files are listed verifies like a real one ...
    (tree / "store").mkdir()
    (lens / "eval").rename(tree / "store" / "eval")
    (lens / "eval").symlink_to("../../../../store/eval", target_is_directory=True)
    verify_collection(tree)
    # ... and an unlisted file behind a folder link is found (Path.rglob would not look there).
    (tree / "attic").mkdir()
    (tree / "attic" / "notes.txt").write_text("unlisted")
    (lens / "attic").symlink_to("../../../../attic", target_is_directory=True)
    with pytest.raises(
        CollectionError, match="tuned/attic/notes.txt is in the tree but not listed"
    ):
        verify_collection(tree)


@pytest.mark.parametrize("link", ["folder out", "file out", "loop", "broken"])
def test_verify_refuses_links_out_of_the_tree_and_loops(lenses, tmp_path, link):
    dirs, _ = lenses
    tree = package_lenses(dirs[:1], tmp_path / "tree")
    lens = tree / "lenses" / MODEL_ID / "tuned"
    rel = f"lenses/{MODEL_ID}/tuned"
    if link == "folder out":
        (lens / "outside").symlink_to(tmp_path / "in", target_is_directory=True)
        message = f"{rel}/outside is a link to {tmp_path / 'in'}, outside the collection"
    elif link == "file out":  # the very bytes that were packaged: only the link gives it away
        (lens / "lens.safetensors").unlink()
        (lens / "lens.safetensors").symlink_to(dirs[0] / "lens.safetensors")
        message = f"{rel}/lens.safetensors is a link to .*, outside the collection"
    elif link == "loop":
        (lens / "loop").symlink_to("..", target_is_directory=True)
        message = f"{rel}/loop is a link back to its own folder"
    else:
        (lens / "gone").symlink_to(tmp_path / "nowhere")
        message = f"{rel}/gone is a broken link"
    with pytest.raises(CollectionError, match=message):
        verify_collection(tree)


def test_a_cached_tree_may_link_its_files_to_the_cache_blobs(lenses, tmp_path, hub_cache, model):
    """The HF cache keeps a snapshot's files in ``blobs/`` and links them from ``snapshots/``."""
    dirs, _ = lenses
    tree = package_lenses(dirs, tmp_path / "tree")
    cached = _publish_to_cache(tree, hub_cache)
    blobs = cached.parent.parent / "blobs"
    blobs.mkdir()
    for number, path in enumerate(sorted(p for p in cached.rglob("*") if p.is_file())):
        path.rename(blobs / str(number))
        path.symlink_to(blobs / str(number))
    assert verify_collection(cached)["lenses"].keys() == verify_collection(tree)["lenses"].keys()
    assert download_collection("someone/lenses") == cached
    assert load_lens(f"hf:datasets/someone/lenses/lenses/{MODEL_ID}/tuned", model).kind == "tuned"
    # Only the repository's own blobs: a link elsewhere from a snapshot is still refused.
    weights = cached / "lenses" / MODEL_ID / "tuned" / "lens.safetensors"
    weights.unlink()
    weights.symlink_to(dirs[0] / "lens.safetensors")
    with pytest.raises(CollectionError, match="outside the collection"):
        verify_collection(cached)


def _entry(index):
    return index["lenses"][f"lenses/{MODEL_ID}/tuned"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda index: index["lenses"].update({f"lenses/{MODEL_ID}/tuned": ["config.json"]}),
            "entry 'lenses/org/tiny-llama/tuned': the entry must be an object .* got \\['config.json'\\] \\(list\\)",
        ),
        (
            lambda index: _entry(index)["files"]["config.json"].update(size="1397"),
            "files\\['config.json'\\].size must be a whole number of bytes, got '1397' \\(str\\)",
        ),
        (
            lambda index: _entry(index)["files"]["config.json"].update(size=True),
            "files\\['config.json'\\].size must be a whole number",
        ),
        (
            lambda index: _entry(index)["files"]["config.json"].update(sha256="ABC"),
            "files\\['config.json'\\].sha256 must be a sha256 hex digest",
        ),
        (
            lambda index: _entry(index)["files"]["config.json"].update(sha256=None),
            "sha256 must be a sha256 hex digest .*got None",
        ),
        (
            lambda index: _entry(index).update(files=["config.json"]),
            "field 'files' must be an object",
        ),
        (
            lambda index: _entry(index)["files"].update(
                {"../../../INDEX.json": {"sha256": "0" * 64, "size": 1}}
            ),
            "file name '../../../INDEX.json' in 'files' must be a relative path inside the lens folder",
        ),
        (
            lambda index: _entry(index).update(model=7),
            "field 'model' must be a non-empty string, got 7",
        ),
        (
            lambda index: _entry(index).pop("kind"),
            "field 'kind' must be a non-empty string, got None",
        ),
        (
            lambda index: _entry(index).update(metrics={"mean_kl_bits": "0.75"}),
            "metrics.mean_kl_bits must be a number",
        ),
    ],
    ids=[
        "entry a list",
        "size a string",
        "size a bool",
        "sha256 not hex",
        "sha256 missing",
        "files a list",
        "file name leaves the lens",
        "model a number",
        "kind missing",
        "mean KL a string",
    ],
)
def test_malformed_index_fields_are_named(lenses, tmp_path, damage, message):
    from tunedlens.hub.listing import known_lenses

    dirs, _ = lenses
    tree = package_lenses(dirs[:1], tmp_path / "tree")
    index = json.loads((tree / "INDEX.json").read_text())
    damage(index)
    (tree / "INDEX.json").write_text(json.dumps(index))
    with pytest.raises(CollectionError, match=message):
        verify_collection(tree)
    with pytest.raises(CollectionError, match=message):
        known_lenses(collections=[tree])


def test_download_refuses_a_file_as_out(tmp_path, hub_cache):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(CollectionError, match="--out '.*afile' is a file, not a directory"):
        download_collection("someone/lenses", out=tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_report_that_cannot_be_attached_is_refused_before_anything_is_written(lenses, tmp_path):
    dirs, _ = lenses
    out = tmp_path / "coll"
    with pytest.raises(CollectionError, match="cannot read the evaluation"):
        package_lenses(dirs, out, evals={"tuned": tmp_path / "nowhere"})
    assert not out.exists()
    only_logit = tmp_path / "logit-report"
    only_logit.mkdir()
    (only_logit / "metrics.json").write_text(json.dumps({"lenses": {"logit": {"kl_bits": [1.0]}}}))
    with pytest.raises(CollectionError, match="reports only the logit lens"):
        package_lenses(dirs, out, evals={"tuned": only_logit})
    assert not out.exists()
    package_lenses(dirs, out)  # the same command with a good report (none) then works
    assert verify_collection(out)["lenses"]
