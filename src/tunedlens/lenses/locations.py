"""Where a lens lives: a local directory, or a hub location downloaded into the usual HF cache.

Lens locations (resolved by :func:`tunedlens.lenses.load_lens`):

* ``logit``: the logit lens (no files);

* a local directory: used as is;
* ``hf:ORG/REPO[/SUBDIR][@REVISION]``: a lens stored in a hub model repository;
* ``tuned-lens:MODEL_ID[@REVISION]``: a lens published by the reference package, which keeps them
  in the hub space ``AlignmentResearch/tuned-lens`` under ``lens/MODEL_ID``.

With ``HF_HUB_OFFLINE=1`` only the local cache is consulted.
"""

from __future__ import annotations

import os
from pathlib import Path

from tunedlens.errors import LensFileError, require
from tunedlens.lenses.files import LENS_FILES

REFERENCE_SPACE = "AlignmentResearch/tuned-lens"
HUB_PREFIXES = ("hf:", "tuned-lens:")


def parse_hub_spec(spec: str) -> tuple[str, str, str | None, str]:
    """Split a hub lens location into ``(repo_id, subfolder, revision, repo_type)``."""
    if spec.startswith("tuned-lens:"):
        model_id, _, revision = spec.removeprefix("tuned-lens:").partition("@")
        return REFERENCE_SPACE, f"lens/{model_id.strip('/')}", revision or None, "space"
    location, _, revision = spec.removeprefix("hf:").partition("@")
    parts = location.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise LensFileError(
            f"{spec!r} is not a hub lens location; write hf:ORG/REPO[/SUBDIR][@REV]."
        )
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or None, "model"


def lens_dir(spec: str | os.PathLike) -> Path:
    """The local directory of a lens location, downloading it from the hub if needed."""
    path = Path(spec)
    if path.exists() or not isinstance(spec, str) or not spec.startswith(HUB_PREFIXES):
        if not path.exists():
            raise LensFileError(
                f"no lens directory at {str(spec)!r}. For a lens on the hub write "
                "hf:ORG/REPO[/SUBDIR] or tuned-lens:MODEL_ID (the reference's published lenses)."
            )
        return path
    snapshot_download = require("huggingface_hub", "hub").snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, subfolder, revision, repo_type = parse_hub_spec(spec)
    patterns = [f"{subfolder}/{name}" if subfolder else name for name in LENS_FILES]
    try:
        root = snapshot_download(
            repo_id, repo_type=repo_type, revision=revision, allow_patterns=patterns
        )
    except LocalEntryNotFoundError:
        raise LensFileError(
            f"{spec} is not in the local Hugging Face cache and the hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1). Download it once with network access, or pass a "
            "local lens directory."
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise LensFileError(f"could not fetch {spec} from the hub: {error}") from None
    return Path(root) / subfolder if subfolder else Path(root)
