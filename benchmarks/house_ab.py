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
import resource
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


def timed(src: str, args: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, all threads) of one ``python -m tunedlens ARGS``.

    CPU time is the comparison that survives a shared machine: other jobs stretch the wall
    time of both versions unevenly, but not the work a process does.
    """
    # numpy's matrix products for both: the torch path of versions before #21 crashes on Intel
    # CPUs (its worker threads ran with autograd on).
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(src).resolve()),
        "HF_HUB_OFFLINE": "1",
        "TUNEDLENS_MATMUL": "numpy",
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "tunedlens", *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", required=True, help="src/ of the old version")
    parser.add_argument("--after", required=True, help="src/ of the new version")
    parser.add_argument("--lens", required=True, help="a tuned lens for demo, readable by both")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            order = [("before", args.before), ("after", args.after)]
            for version, src in order if round_ % 2 == 0 else order[::-1]:
                work = Path(scratch) / version
                work.mkdir(exist_ok=True)
                for name, command in jobs(args.lens, args.tokens, work).items():
                    wall, cpu = timed(src, command)
                    runs.setdefault(name, {}).setdefault(version, []).append((wall, cpu))
                    print(
                        f"round {round_ + 1} {version:6} {name:7} wall {wall:7.1f} s  cpu "
                        f"{cpu:7.1f} s  load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
    rows = []
    for name, by_version in runs.items():
        row = {"job": name}
        for version in ("before", "after"):
            row[f"{version}_cpu_s"] = statistics.median(cpu for _, cpu in by_version[version])
            row[f"{version}_wall_s"] = statistics.median(wall for wall, _ in by_version[version])
            row[f"{version}_all"] = by_version[version]
        row["cpu_ratio"] = row["after_cpu_s"] / row["before_cpu_s"]
        rows.append(row)
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
        f"`python -m tunedlens` processes, {args.rounds} alternating rounds, medians; eval on "
        f"{args.tokens:,} tokens of corpus/test, no prompt suite, no bootstrap, no figures; predict "
        "through the same tuned lens; TUNEDLENS_MATMUL=numpy for both (the torch path of the old "
        "version crashes on Intel CPUs: #21). The machine was shared with other jobs, so the "
        "comparison is by CPU time (user + system over all threads), which other jobs stretch far "
        "less than wall time; wall time is shown too.",
        "",
        "| job | CPU before (s) | CPU after (s) | after / before | wall before (s) | wall after (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['job']} | {row['before_cpu_s']:.1f} | {row['after_cpu_s']:.1f} | "
            f"{row['cpu_ratio']:.2f} | {row['before_wall_s']:.1f} | {row['after_wall_s']:.1f} |"
        )
    (RESULTS / "house_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
