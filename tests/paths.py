"""Where the tests and benchmarks find their files: the one place that reaches outside the repo.

``DATA`` is the repository's own test data. ``SHARED`` is the ``shared/`` folder that sits beside
a checkout of this repository on the project's machines (the corpus, the reference package's
fixtures and setup); set ``TUNEDLENS_SHARED`` to use another location. Tests that need it skip
when it is missing; nothing else in ``tests/`` or ``benchmarks/`` refers to ``../shared``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SHARED = Path(os.environ.get("TUNEDLENS_SHARED", ROOT.parent / "shared"))
CORPUS = SHARED / "data" / "corpus"
PEER = SHARED / "peer"
