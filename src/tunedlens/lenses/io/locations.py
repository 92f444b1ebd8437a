"""Where a lens lives: a local directory, or a hub location downloaded into the usual HF cache.

Lens locations (resolved by :func:`tunedlens.lenses.load_lens`):

* ``logit``: the logit lens (no files);

* a local directory: used as is;
* ``hf:ORG/REPO[/SUBDIR][@REVISION]``: a lens stored in a hub model repository;
* ``hf:datasets/ORG/REPO/lenses/MODEL/NAME[@REVISION]``: a lens of a collection (a hub dataset
  made by ``tunedlens hub package``); its files are checked against the collection's
  ``INDEX.json`` before use;
* ``tuned-lens:MODEL_ID[@REVISION]``: a lens published by the reference package, which keeps them
  in the hub space ``AlignmentResearch/tuned-lens`` under ``lens/MODEL_ID``;
* ``jlens:NAME[@REVISION]``: a J-lens published by Gurnee et al. (2026) in
  ``neuronpedia/jacobian-lens``, by short name (``qwen3-8b``) or model id (``Qwen/Qwen3-8B``),
  downloaded at the commit the shipped registry pins (``jlens_registry.json``).

With ``HF_HUB_OFFLINE=1`` only the local cache is consulted.
"""

from __future__ import annotations

import functools
import json
import os
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from tunedlens.errors import LensFileError, require
from tunedlens.lenses.io.files import LENS_FILES
from tunedlens.lenses.io.index import INDEX_NAME, check_lens_files, read_index

REFERENCE_SPACE = "AlignmentResearch/tuned-lens"
HUB_PREFIXES = ("hf:", "tuned-lens:", "jlens:")


@functools.cache
def jlens_registry() -> dict:
    """The published J-lenses: ``{"repo_id", "revision", "lenses": {name: entry}}``."""
    return json.loads(
        resources.files("tunedlens.lenses.io").joinpath("jlens_registry.json").read_text()
    )


@functools.cache
def tuned_lens_registry() -> dict:
    """The reference's published tuned lenses known offline.

    ``{"repo_id", "revision", "note", "lenses": {model id: {"evidence"}}}``; ``revision`` is
    ``None``: the space's tree could not be verified (see ``note``).
    """
    return json.loads(
        resources.files("tunedlens.lenses.io").joinpath("tuned_lens_registry.json").read_text()
    )


def published_jlens(name: str) -> tuple[str, dict]:
    """The registry entry ``(short name, entry)`` for a short name or model id (any case)."""
    lenses = jlens_registry()["lenses"]
    wanted = name.strip().lower()
    for short, entry in lenses.items():
        if wanted == short.lower() or wanted in (model.lower() for model in entry["models"]):
            return short, entry
    listing = ", ".join(sorted(lenses))
    raise LensFileError(
        f"no published J-lens is called {name!r}. The {len(lenses)} published ones (short names; "
        f"their Hugging Face model ids work too): {listing}."
    )


def _jlens_path(spec: str) -> Path:
    """Download (or find in the HF cache) the artifact of ``jlens:NAME[@REV]``."""
    hf_hub_download = require("huggingface_hub", "hub").hf_hub_download
    name, _, revision = spec.removeprefix("jlens:").partition("@")
    _, entry = published_jlens(name)
    registry = jlens_registry()
    with hub_errors(f"{spec} ({entry['filename']})", ", or pass the local .pt file"):
        return Path(
            hf_hub_download(
                registry["repo_id"], entry["filename"], revision=revision or registry["revision"]
            )
        )


@contextmanager
def hub_errors(what: str, instead: str, error: type[LensFileError] = LensFileError):
    """Turn huggingface_hub's download errors into one clear ``error`` naming ``what``."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        yield
    except LocalEntryNotFoundError:
        raise error(
            f"{what} is not in the local Hugging Face cache and the hub cannot be reached "
            f"(offline, or HF_HUB_OFFLINE=1). Download it once with network access{instead}."
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as failure:
        raise error(f"could not fetch {what} from the hub: {failure}") from None


def parse_hub_spec(spec: str) -> tuple[str, str, str | None, str]:
    """Split a hub lens location into ``(repo_id, subfolder, revision, repo_type)``."""
    if spec.startswith("tuned-lens:"):
        model_id, _, revision = spec.removeprefix("tuned-lens:").partition("@")
        return REFERENCE_SPACE, f"lens/{model_id.strip('/')}", revision or None, "space"
    location, _, revision = spec.removeprefix("hf:").partition("@")
    parts = location.strip("/").split("/")
    repo_type = "model"
    if parts[0] == "datasets":
        repo_type, parts = "dataset", parts[1:]
        if len(parts) < 3 or not all(parts):
            raise LensFileError(
                f"{spec!r} is not a collection lens location; write "
                "hf:datasets/ORG/REPO/lenses/MODEL/NAME[@REV]."
            )
    if len(parts) < 2 or not all(parts):
        raise LensFileError(
            f"{spec!r} is not a hub lens location; write hf:ORG/REPO[/SUBDIR][@REV]."
        )
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or None, repo_type


LOCATION_FORMS = (
    "'logit', a lens directory, hf:ORG/REPO[/SUBDIR][@REV], "
    "tuned-lens:MODEL_ID[@REV] or jlens:NAME[@REV]"
)
"""What a lens location looks like, for error messages."""
_PREFIX_NAMES = {
    "hf:": ("repository", "hf:ORG/REPO[/SUBDIR][@REV]"),
    "tuned-lens:": ("model id", "tuned-lens:MODEL_ID[@REV], e.g. tuned-lens:gpt2"),
    "jlens:": (
        "J-lens",
        "jlens:NAME[@REV], e.g. jlens:qwen3-8b ('tunedlens lens list' shows them)",
    ),
}


def check_location_text(spec) -> None:
    """Refuse a location that cannot name a lens at all: not text, empty, or a bare prefix."""
    if not isinstance(spec, (str, os.PathLike)):
        raise LensFileError(
            f"a lens location must be a string or a path, got {type(spec).__name__} {spec!r}; "
            f"pass {LOCATION_FORMS}."
        )
    if isinstance(spec, str) and not spec.strip():
        raise LensFileError(f"the lens location is empty; pass {LOCATION_FORMS}.")
    for prefix, (what, form) in _PREFIX_NAMES.items():
        if isinstance(spec, str) and spec.startswith(prefix) and not Path(spec).exists():
            if not spec.removeprefix(prefix).partition("@")[0].strip(" /"):
                raise LensFileError(f"{spec!r} has no {what} after {prefix!r}; write {form}.")


def lens_dir(spec: str | os.PathLike) -> Path:
    """The local directory (or J-lens file) of a lens location, downloading it if needed."""
    check_location_text(spec)
    path = Path(spec)
    if path.exists() or not isinstance(spec, str) or not spec.startswith(HUB_PREFIXES):
        if not path.exists():
            raise LensFileError(
                f"no lens directory at {str(spec)!r}. For a lens on the hub write "
                "hf:ORG/REPO[/SUBDIR], tuned-lens:MODEL_ID (the reference's published lenses) or "
                "jlens:NAME (the published J-lenses)."
            )
        return path
    if spec.startswith("jlens:"):
        return _jlens_path(spec)
    snapshot_download = require("huggingface_hub", "hub").snapshot_download

    repo_id, subfolder, revision, repo_type = parse_hub_spec(spec)
    patterns = [f"{subfolder}/{name}" if subfolder else name for name in LENS_FILES]
    if repo_type == "dataset":  # a collection: the whole lens folder, and the index to check it
        patterns = [f"{subfolder}/*", f"{subfolder}/**", INDEX_NAME]
    with hub_errors(spec, ", or pass a local lens directory"):
        root = snapshot_download(
            repo_id, repo_type=repo_type, revision=revision, allow_patterns=patterns
        )
    if repo_type == "dataset":
        index = read_index(Path(root))
        if subfolder not in index["lenses"]:
            known = ", ".join(sorted(index["lenses"])) or "none"
            raise LensFileError(
                f"{spec}: {subfolder} is not in the collection's {INDEX_NAME}; it holds {known}."
            )
        check_lens_files(Path(root), subfolder, index["lenses"][subfolder])
        return Path(root) / subfolder
    return Path(root) / subfolder if subfolder else Path(root)
