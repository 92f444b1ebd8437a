"""Upload a lens collection to a hub dataset repository, and download (and verify) one.

Uploads are one commit (``HfApi.upload_folder``) followed by a tag; downloads go through the
usual HF cache (so they work offline once cached) and every file is checked against the
collection's ``INDEX.json`` before anything is used or copied out.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from tunedlens.errors import require
from tunedlens.hub.collection import CARD_NAME, verify_collection
from tunedlens.lenses.io.index import (
    INDEX_NAME,
    LENSES_DIR,
    CollectionError,
    check_lens_files,
    read_index,
)
from tunedlens.lenses.io.locations import hub_errors

TAG = re.compile(r"^v\d{4}\.\d{2}\.\d{2}$")


def upload_collection(
    tree: str | os.PathLike,
    repo_id: str,
    *,
    revision_tag: str,
    token: str | None = None,
    private: bool = False,
) -> str:
    """Verify ``tree``, upload it to the dataset ``repo_id`` in one commit and tag it.

    Returns the commit's URL. Nothing is uploaded when the tree does not verify, the tag is
    not ``vYYYY.MM.DD`` or no token is available.
    """
    hub = require("huggingface_hub", "hub")
    if not TAG.match(revision_tag):
        raise CollectionError(
            f"--revision-tag must look like v2026.11.28 (vYYYY.MM.DD), got {revision_tag!r}"
        )
    if "/" not in repo_id.strip("/"):
        raise CollectionError(f"REPO must be ORG/NAME (a hub dataset repository), got {repo_id!r}")
    verify_collection(tree)
    token = token or hub.get_token()
    if not token:
        raise CollectionError(
            "no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (a token with write "
            "access to the repository). Nothing was uploaded."
        )
    api = hub.HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(tree),
        repo_id=repo_id,
        repo_type="dataset",
        commit_message=f"tunedlens lens collection {revision_tag}",
    )
    api.create_tag(repo_id, tag=revision_tag, repo_type="dataset", revision=commit.oid)
    return commit.commit_url


def download_collection(
    spec: str, *, model: str | None = None, out: str | os.PathLike | None = None
) -> Path:
    """Fetch ``ORG/REPO[@REV]`` (all lenses, or ``model``'s) into the HF cache and verify it.

    Returns the verified tree in the cache, or ``out`` when given (the verified files are copied
    there; ``out`` must not hold files).
    """
    hub = require("huggingface_hub", "hub")
    repo_id, _, revision = spec.partition("@")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise CollectionError(
            f"--out {str(out)!r} is a file, not a directory; choose a new directory."
        )
    if out is not None and Path(out).exists() and any(Path(out).iterdir()):
        raise CollectionError(f"--out {str(out)!r} already holds files; choose a new directory.")
    patterns = [INDEX_NAME, CARD_NAME] + (
        [f"{LENSES_DIR}/{model}/**"] if model else [f"{LENSES_DIR}/**"]
    )
    with hub_errors(spec, "", error=CollectionError):
        root = Path(
            hub.snapshot_download(
                repo_id, repo_type="dataset", revision=revision or None, allow_patterns=patterns
            )
        )
    index = read_index(root)
    chosen = {
        rel: entry for rel, entry in index["lenses"].items() if model in (None, entry.get("model"))
    }
    if not chosen:
        models = sorted({entry.get("model") for entry in index["lenses"].values()})
        raise CollectionError(f"{spec} has no lens for {model!r}; its models: {', '.join(models)}.")
    if model is None:
        verify_collection(root, load=False)
    else:
        for rel, entry in sorted(chosen.items()):
            check_lens_files(root, rel, entry)
    if out is None:
        return root
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (INDEX_NAME, CARD_NAME):
        if (root / name).exists():
            shutil.copyfile(root / name, out / name)
    for rel, entry in sorted(chosen.items()):
        for name in entry.get("files", {}):
            (out / rel / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel / name, out / rel / name)
    return out
