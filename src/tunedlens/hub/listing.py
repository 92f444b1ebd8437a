"""``tunedlens lens list``: the lenses known for a model, with the location to pass to ``--lens``.

Where it looks, in this order:

* the folder it runs in (``folder``): the current directory itself and each of its immediate
  subfolders that holds a lens of this library (``config.json`` of a tuned lens or J-lens, as
  ``train --out`` and ``fit-jlens --out`` write them) or of the reference (``params.pt``); deeper
  folders and loose ``.pt`` files are not searched (pass ``--collection`` or the path itself);
* local collections given with ``--collection``;
* the reference's published tuned lenses and the published J-lenses, each marked ``cached``
  when its files are already in the local Hugging Face cache (usable offline).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from tunedlens.lenses.io.files import CONFIG_FILE, PROVENANCE_FILE, REFERENCE_WEIGHTS
from tunedlens.lenses.io.index import read_index
from tunedlens.lenses.io.locations import (
    jlens_registry,
    parse_hub_spec,
    tuned_lens_registry,
)

JLENS_CONFIG_FORMAT = "tunedlens-jlens"


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _folder_lens(path: Path) -> dict | None:
    """``{"kind", "names"}`` of the lens in the folder ``path``, or ``None`` when it holds none.

    ``names``: every model name the lens records. Only its small JSON files are read.
    """
    config = _read_json(path / CONFIG_FILE)
    if not config:
        return None
    if config.get("format") == JLENS_CONFIG_FORMAT:
        kind = "jacobian"
    elif config.get("format") == "tunedlens" or (path / REFERENCE_WEIGHTS).exists():
        kind = "tuned"
    else:
        return None  # a model's config.json, or anything else
    provenance = _read_json(path / PROVENANCE_FILE)
    training = provenance.get("training") or {}
    metadata = config.get("metadata") or {}
    names = [
        config.get("base_model_name_or_path"),
        training.get("model_spec"),
        metadata.get("model"),
        *((source.get("model_source") or {}).get("model_id") for source in (training, metadata)),
    ]
    return {"kind": kind, "names": [name for name in names if isinstance(name, str) and name]}


def folder_lenses(root: str | os.PathLike = ".") -> list[dict]:
    """Lenses in ``root`` and its immediate subfolders, as :func:`known_lenses` rows.

    ``model`` is the first model name the lens records; ``names`` every one (``demo`` and
    ``HuggingFaceTB/SmolLM2-135M-Instruct`` for a lens of the embedded model).
    """
    root = Path(root)
    try:
        folders = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    except OSError:
        return []
    rows = []
    for folder in folders:
        found = _folder_lens(folder)
        if found is None:
            continue
        rows.append(
            {
                "source": f"this folder ({root.resolve()})",
                "model": found["names"][0] if found["names"] else "unrecorded",
                "kind": found["kind"],
                "location": "." if folder == root else f"./{folder.name}",
                "local": "folder",
                "names": found["names"],
            }
        )
    return rows


def _cached(repo_id: str, filename: str, revision: str | None, repo_type: str) -> bool:
    """Whether ``filename`` of the hub repository is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # the hub extra is not installed: nothing can be cached
        return False
    found = try_to_load_from_cache(repo_id, filename, revision=revision, repo_type=repo_type)
    return isinstance(found, str)


def known_lenses(
    model: str | None = None,
    collections: Sequence[str | os.PathLike] = (),
    folder: str | os.PathLike | None = ".",
) -> list[dict]:
    """Lenses in ``folder``, local collections, and the published tuned lenses and J-lenses.

    ``model`` matches a hub model id or a J-lens short name (or, for lenses in ``folder``, any
    model name the lens records, e.g. ``demo``), case-insensitively. Each row has ``source``,
    ``model``, ``kind``, ``location`` (what ``--lens`` takes) and ``local``: ``folder`` (in
    ``folder`` or a collection), ``cached`` (a published lens already downloaded) or ``no``.
    ``folder=None`` skips the folder scan (see the module docstring for what it scans).
    """
    wanted = model.lower() if model else None
    here = []
    for row in folder_lenses(folder) if folder is not None else []:
        names = row.pop("names")
        if wanted is None or wanted in (name.lower() for name in names):
            here.append(row)
    rows = []
    for tree in map(Path, collections):
        for rel, entry in sorted(read_index(tree)["lenses"].items()):
            rows.append(
                {
                    "source": str(tree),
                    "model": entry["model"],
                    "kind": entry["kind"],
                    "location": str(tree / rel),
                    "local": "folder",
                }
            )
    reference = tuned_lens_registry()
    for model_id in reference["lenses"]:
        repo_id, subfolder, revision, repo_type = parse_hub_spec(f"tuned-lens:{model_id}")
        cached = _cached(repo_id, f"{subfolder}/{REFERENCE_WEIGHTS}", revision, repo_type)
        rows.append(
            {
                "source": f"{reference['repo_id']} (space, {reference['revision'] or 'unpinned'})",
                "model": model_id,
                "kind": "tuned",
                "location": f"tuned-lens:{model_id}",
                "local": "cached" if cached else "no",
            }
        )
    registry = jlens_registry()
    for name, entry in sorted(registry["lenses"].items()):
        cached = _cached(registry["repo_id"], entry["filename"], registry["revision"], "model")
        for model_id in entry["models"] or [name]:
            rows.append(
                {
                    "source": f"{registry['repo_id']}@{registry['revision'][:10]}",
                    "model": model_id,
                    "kind": "jacobian",
                    "location": f"jlens:{name}",
                    "short_name": name,
                    "local": "cached" if cached else "no",
                }
            )
    if wanted is None:
        return here + rows
    return here + [
        row for row in rows if wanted in (row["model"].lower(), row.get("short_name", "").lower())
    ]
