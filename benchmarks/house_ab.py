"""Whole commands, one code version against another: did a refactor make ``predict`` or ``eval`` slower?

Each round runs ``tunedlens predict`` and ``tunedlens eval`` as a user does (a fresh process,
``python -m tunedlens``) with ``PYTHONPATH`` at one ``src/`` tree, then at the other, alternating
because this shared machine's speed drifts; the wall time of each process is measured from
outside. Usage:

    git worktree add /tmp/before <commit>
    python benchmarks/house_ab.py --before /tmp/before/src --after src --lens DIR [--rounds 3]

Writes ``benchmarks/results/house_ab.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CORPUS, RESULTS, machine

PROMPT = "The capital of France is Paris. The capital of Germany is"


def jobs(lens: str, tokens: int, work: Path) -> dict[str, list[str]]:
    """The command lines timed: predict through a tuned lens, and an exact eval."""
    return {
        "predict": ["predict", "demo", PROMPT, "--lens", lens],
        "eval": [
            "eval",
            "demo",
            "--lens",
            lens,
            "--data",
            str(CORPUS / "test.jsonl.gz"),
            "--tokens",
            str(tokens),
            "--seq-len",
            "512",
            "--prompts",
            "none",
            "--bootstrap",
            "0",
            "--no-plots",
            "--out",
            str(work / "eval"),
            "--force",
        ],
    }


def timed(src: str, args: list[str]) -> float:
    """Seconds one ``python -m tunedlens ARGS`` process took with ``src`` on the path."""
    # numpy's matrix products for both: the torch path of versions before #21 crashes on Intel
    # CPUs (its worker threads ran with autograd on).
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(src).resolve()),
        "HF_HUB_OFFLINE": "1",
        "TUNEDLENS_MATMUL": "numpy",
    }
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tunedlens", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="src/ of the old version")
    parser.add_argument("--after", required=True, help="src/ of the new version")
    parser.add_argument("--lens", required=True, help="a tuned lens for demo, readable by both")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            order = [("before", args.before), ("after", args.after)]
            for version, src in order if round_ % 2 == 0 else order[::-1]:
                work = Path(scratch) / version
                work.mkdir(exist_ok=True)
                for name, command in jobs(args.lens, args.tokens, work).items():
                    seconds = timed(src, command)
                    times.setdefault(name, {}).setdefault(version, []).append(seconds)
                    print(f"round {round_ + 1} {version:6} {name:7} {seconds:7.1f} s", flush=True)
    rows = []
    for name, by_version in times.items():
        before, after = (statistics.median(by_version[v]) for v in ("before", "after"))
        rows.append(
            {
                "job": name,
                "before_s": before,
                "after_s": after,
                "ratio": after / before,
                "before_all": by_version["before"],
                "after_all": by_version["after"],
            }
        )
    payload = {
        "rows": rows,
        "tokens": args.tokens,
        "rounds": args.rounds,
        "machine": machine(),
        "before": args.before,
        "after": args.after,
    }
    (RESULTS / "house_ab.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# The house refactor (#22): whole commands before and after",
        "",
        f"`python -m tunedlens` processes, {args.rounds} alternating rounds, median wall time; eval "
        f"on {args.tokens:,} tokens of corpus/test, no prompt suite, no bootstrap, no figures; "
        f"predict through the same tuned lens; TUNEDLENS_MATMUL=numpy for both (the torch path of "
        f"the old version crashes on Intel CPUs: #21). Machine: {machine()}.",
        "",
        "| job | before (s) | after (s) | after / before | each round, before | each round, after |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['job']} | {row['before_s']:.1f} | {row['after_s']:.1f} | {row['ratio']:.2f} | "
            + ", ".join(f"{t:.1f}" for t in row["before_all"])
            + " | "
            + ", ".join(f"{t:.1f}" for t in row["after_all"])
            + " |"
        )
    (RESULTS / "house_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
