"""A whole ``tunedlens train`` process against the bare forward pass over the same tokens (issue #26,
item 4): SmolLM2-135M at 131,072 tokens and Gemma-3-270M at 32,768, CPU float32.

For each model, one after another (never concurrently):

- ``train``: ``python -m tunedlens train MODEL --data corpus/train --tokens T`` as a user runs it,
  timed from outside (interpreter start, imports, loading, packing, the least-squares start,
  steps, validations and saving: everything);
- ``forward``: in a fresh process, the model's bare forward pass (no grad, logits at every
  position, 8 sequences per call) over the T tokens the run packs, timed alone (loading apart).

    python benchmarks/whole_process.py [--only demo gemma3]

Saves benchmarks/results/whole_process.{json,md}; a model already measured in WORK is not rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CORPUS, machine, save
from throughput import model_spec

TOKENS = {"demo": 2**17, "gemma3": 2**15}
FORWARD = """
import json, sys, time, torch
from tunedlens import load_model
from tunedlens.data import pack_blocks
model, tokenizer = load_model(sys.argv[1])
blocks = pack_blocks(sys.argv[2], tokenizer, seq_len=512, n_sequences=int(sys.argv[3]) // 512)
with torch.no_grad():
    model(blocks.tokens[:1, :16])  # warm-up
    started = time.perf_counter()
    for batch in blocks.tokens.split(8):
        model(batch)
print(json.dumps({"forward_s": time.perf_counter() - started}))
"""


def measure(name: str, tokens: int, work: Path) -> dict:
    spec = model_spec(name)
    data = str(CORPUS / "train.jsonl.gz")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = work / f"lens-{name}"
    load = os.getloadavg()
    started = time.perf_counter()
    with open(work / f"train-{name}.log", "w") as log:
        subprocess.run(
            [
                *(sys.executable, "-m", "tunedlens", "train", spec, "--data", data),
                *("--tokens", str(tokens), "--out", str(out), "--force"),
            ],
            check=True,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    train_s = time.perf_counter() - started
    forward = subprocess.run(
        [sys.executable, "-c", FORWARD, spec, data, str(tokens)],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    record = json.loads((out / "provenance.json").read_text())["training"]
    kl = record["val_kl_bits"]
    return {
        "tokens": tokens,
        "train_process_s": train_s,
        "forward_s": json.loads(forward.stdout.splitlines()[-1])["forward_s"],
        "val_kl_bits_mean": sum(kl) / len(kl),
        "lstsq_tokens": record["lstsq_tokens"],
        "val_tokens": record["val_tokens"],
        "best_step": record["best_step"],
        "steps": record["steps_done"],
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(TOKENS), choices=list(TOKENS))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "whole")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "results.json"
    results = json.loads(cache.read_text()) if cache.exists() else {}
    for name in args.only:
        if name not in results:
            results[name] = measure(name, TOKENS[name], args.work)
            cache.write_text(json.dumps(results, indent=2))
    titles = {"demo": "SmolLM2-135M", "gemma3": "Gemma-3-270M"}
    lines = [
        "# A whole training process vs the bare forward pass (CPU float32)",
        "",
        "`python -m tunedlens train MODEL --data corpus/train --tokens T` (default recipe) timed "
        "from outside, everything included, against the model's bare forward pass over the same "
        "T tokens in a fresh process (loading apart). Load averages of this 2-core machine "
        "before and after each training process are listed: about 2 means only the run itself.",
        "",
        "| model | tokens | whole process s | bare forward s | × forward | steps | best step "
        "| validation KL, bits | load before → after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in results.items():
        ratio = r["train_process_s"] / r["forward_s"]
        load = f"{r['load_average_before'][0]:.1f} → {r['load_average_after'][0]:.1f}"
        lines.append(
            f"| {titles[name]} | {r['tokens']:,} | {r['train_process_s']:.0f} | "
            f"{r['forward_s']:.0f} | {ratio:.2f} | {r['steps']} | {r['best_step']} | "
            f"{r['val_kl_bits_mean']:.3f} | {load} |"
        )
    lines += ["", "Target (issue #26, item 4): ≤ 1.5× for both.", ""]
    save("whole_process", {"machine": machine(), "results": results}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
