"""Our exact evaluation, one code version against another, on SmolLM2 (CPU float32).

Used to check that a refactor of the readout path made no path slower: each round runs the same
job in a separate process with ``PYTHONPATH`` at one ``src/`` tree, then the other, alternating
because this shared machine's speed drifts. The job: ``evaluate`` of the logit lens and a
(random, non-identity) tuned lens on layers 0..29 at full vocabulary, ``--tokens`` of corpus/test
in sequences of 512, no prompt suite. Usage:

    git worktree add /tmp/old <commit>
    python benchmarks/eval_ab.py --before /tmp/old/src --after src [--tokens 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, first_documents, machine

WORK = Path(os.environ.get("TUNEDLENS_BENCH_DIR", "/tmp/tunedlens-bench"))


def child(args) -> None:
    import torch

    from tunedlens import TunedLens, evaluate, load_model
    from tunedlens.data import pack_blocks

    model, tokenizer = load_model("demo")
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        for parameter in lens.translator.parameters():
            parameter.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    blocks = pack_blocks(args.data, tokenizer, seq_len=512, n_sequences=args.tokens // 512)
    started = time.perf_counter()
    report = evaluate(model, {"tuned": lens}, blocks.tokens, tokenizer=tokenizer, layers=range(30))
    loop = time.perf_counter() - started
    print(json.dumps({"loop_s": loop, "kl_bits": report.metrics["lenses"]["tuned"]["kl_bits"]}))


def run(src: str, data: Path, tokens: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
    output = subprocess.run(
        [sys.executable, __file__, "--child", "--data", str(data), "--tokens", str(tokens)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before")
    parser.add_argument("--after")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    data = first_documents("test", 400, WORK)
    rounds = []
    for _ in range(args.repeats):
        rounds.append(
            {
                "before": run(args.before, data, args.tokens),
                "after": run(args.after, data, args.tokens),
            }
        )
    before = [r["before"]["loop_s"] for r in rounds]
    after = [r["after"]["loop_s"] for r in rounds]
    worst = max(
        abs(a - b)
        for r in rounds
        for a, b in zip(r["before"]["kl_bits"], r["after"]["kl_bits"], strict=True)
    )
    payload = {
        "machine": machine(),
        "tokens": args.tokens,
        "rounds": [{k: v["loop_s"] for k, v in r.items()} for r in rounds],
        "median_before_s": statistics.median(before),
        "median_after_s": statistics.median(after),
        "max_kl_bits_difference": worst,
    }
    (RESULTS / "eval_readout_ab.json").write_text(json.dumps(payload, indent=2))
    lines = [
        "# Evaluation loop before/after the readout engine (SmolLM2, 30 layers, 2 lenses, CPU fp32)",
        "",
        f"{args.tokens} tokens of corpus/test, full vocabulary; separate processes, alternating.",
        "",
        "| round | before (s) | after (s) |",
        "|---:|---:|---:|",
        *[
            f"| {i + 1} | {b:.1f} | {a:.1f} |"
            for i, (b, a) in enumerate(zip(before, after, strict=True))
        ],
        f"| median | {statistics.median(before):.1f} | {statistics.median(after):.1f} |",
        "",
        f"Largest difference in per-layer KL between the two: {worst:.2e} bits.",
    ]
    (RESULTS / "eval_readout_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
