"""Shared helpers for the benchmark scripts (run on demand, not in CI)."""

from __future__ import annotations

import gzip
import json
import os
import platform
import resource
import sys
from pathlib import Path

import torch

from tunedlens.metrics.divergence import NATS_TO_BITS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from paths import CORPUS, PEER, ROOT

RESULTS = Path(__file__).parent / "results"
LENSES = Path(os.environ.get("TUNEDLENS_LENSES", ROOT.parent / "lenses"))
"""Lenses trained for the benchmarks (``smollm2-tuned``, ``smollm2-jlens``), beside the checkout."""
__all__ = ["CORPUS", "LENSES", "PEER", "RESULTS"]


def machine() -> dict:
    return {
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bits(nats) -> list[float]:
    return [float(x) * NATS_TO_BITS for x in nats]


def save(name: str, payload: dict, table: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(table)
    print(table)


def first_documents(split: str, count: int, work: Path) -> Path:
    """The first ``count`` documents of ``corpus/{split}`` as a plain JSON-lines file in ``work``."""
    path = work / f"{split}-{count}.jsonl"
    with gzip.open(CORPUS / f"{split}.jsonl.gz", "rt") as source, open(path, "w") as target:
        for index, line in enumerate(source):
            if index == count:
                break
            target.write(line)
    return path
