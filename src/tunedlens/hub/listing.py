"""``tunedlens lens list``: the lenses known for a model, with the location to pass to ``--lens``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tunedlens.lenses.io.index import read_index
from tunedlens.lenses.io.locations import jlens_registry, tuned_lens_registry


def known_lenses(
    model: str | None = None, collections: Sequence[str | os.PathLike] = ()
) -> list[dict]:
    """Local collections, the reference's published tuned lenses and the published J-lenses.

    ``model`` matches a hub model id or a J-lens short name, case-insensitively. Each row has
    ``source``, ``model``, ``kind`` and ``location`` (what ``--lens`` takes).
    """
    wanted = model.lower() if model else None
    rows = []
    for tree in map(Path, collections):
        for rel, entry in sorted(read_index(tree)["lenses"].items()):
            rows.append(
                {
                    "source": str(tree),
                    "model": entry["model"],
                    "kind": entry["kind"],
                    "location": str(tree / rel),
                }
            )
    reference = tuned_lens_registry()
    for model_id in reference["lenses"]:
        rows.append(
            {
                "source": f"{reference['repo_id']} (space, {reference['revision'] or 'unpinned'})",
                "model": model_id,
                "kind": "tuned",
                "location": f"tuned-lens:{model_id}",
            }
        )
    registry = jlens_registry()
    for name, entry in sorted(registry["lenses"].items()):
        for model_id in entry["models"] or [name]:
            rows.append(
                {
                    "source": f"{registry['repo_id']}@{registry['revision'][:10]}",
                    "model": model_id,
                    "kind": "jacobian",
                    "location": f"jlens:{name}",
                    "short_name": name,
                }
            )
    if wanted is None:
        return rows
    return [
        row for row in rows if wanted in (row["model"].lower(), row.get("short_name", "").lower())
    ]
