"""Redraw the README's pictures, docs/show.png and docs/serve.png, from the main job's lens.

The main job is the README's first set-up command: ``tunedlens train demo --out lens-demo
--tokens 32768``, then ``tunedlens show ...``. The pictures must show *that* lens, so a lens given
with ``--lens`` is checked against the main job's settings (model, corpus, tokens, recipe, seed)
and refused otherwise; without ``--lens`` the script trains it (about 5 minutes on 2 CPU cores).
``docs/pictures.json`` records the lens the pictures were drawn with and each picture's sha256;
``tests/unit/test_docs.py`` checks that the pictures are the ones recorded and that the record
matches the README's main command.

Usage: python docs/make_pictures.py [--lens lens-demo] [--no-serve]
(``serve.png`` needs the ``serve`` extra, playwright and Debian's chromium.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
PROMPT = "The capital of France is Paris. The capital of Germany is"
# The main job's lens, as its provenance.json records it.
MAIN_JOB = {"model_spec": "demo", "data": "self", "train_tokens": 32768}
MAIN_CONFIG = {"recipe": "default", "seed": 0, "translator": "affine", "points": "block"}


def tunedlens(*args: str, cwd: Path) -> None:
    """Run a ``tunedlens`` command with this Python in ``cwd``; stop on failure."""
    subprocess.run([sys.executable, "-m", "tunedlens", *args], check=True, cwd=cwd)


def lens_record(lens: Path) -> dict:
    """What the pictures' lens is, from its provenance; refuse a lens other than the main job's."""
    provenance = json.loads((lens / "provenance.json").read_text())
    training = provenance["training"]
    record = {key: training[key] for key in MAIN_JOB}
    record |= {key: training["config"][key] for key in MAIN_CONFIG}
    expected = MAIN_JOB | MAIN_CONFIG
    if record != expected:
        differ = {k: record[k] for k in expected if record[k] != expected[k]}
        sys.exit(f"error: {lens} is not the main job's lens ({differ}); train it with the README.")
    return record | {"data_content_hash": training["data_content_hash"]}


def sha256(path: Path) -> str:
    """The file's sha256, hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    """Train (or take) the main job's lens, draw both pictures, write docs/pictures.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lens", type=Path, help="the main job's lens (trained when omitted)")
    parser.add_argument("--no-serve", action="store_true", help="leave docs/serve.png as it is")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        # The pictures name the lens by its location: "lens-demo", as in the main job.
        work = Path(folder)
        if args.lens is None:
            tunedlens("train", "demo", "--out", "lens-demo", "--tokens", "32768", cwd=work)
        else:
            (work / "lens-demo").symlink_to(args.lens.resolve(), target_is_directory=True)
        record = lens_record(work / "lens-demo")
        tunedlens(
            "show", "demo", PROMPT, "--lens", "lens-demo", "--stride", "2",
            "--out", str(DOCS / "show.png"), cwd=work,
        )  # fmt: skip
        if not args.no_serve:
            subprocess.run(
                [sys.executable, str(DOCS / "screenshot_serve.py"), "--lens", "lens-demo"],
                check=True,
                cwd=work,
            )
    pictures = {name: sha256(DOCS / name) for name in ("show.png", "serve.png")}
    manifest = {"lens": record, "prompt": PROMPT, "pictures": pictures}
    (DOCS / "pictures.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
