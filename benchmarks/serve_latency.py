"""Latency of the web explorer's readout, end to end through HTTP, on SmolLM2 (CPU float32).

Starts ``tunedlens serve demo --lens LENS`` in its own process, sends one request to warm it
(model loaded, first readout done), then ``--requests`` identical ``/api/readout`` requests for a
20-token prompt with the logit lens and the tuned lens side by side (every layer, every position,
top-10 per cell), one after another, and reports p50/p95 of the wall time seen by the client.
Usage: python benchmarks/serve_latency.py --lens lens-demo [--requests 50]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx
from common import RESULTS, machine

WORDS = (
    "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy "
    "is Rome, and the capital of Spain is Madrid; the largest city of"
).split()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def prompt_of(client: httpx.Client, url: str, tokens: int) -> str:
    """The shortest prefix of WORDS that is ``tokens`` tokens long (asked of the server)."""
    for count in range(1, len(WORDS) + 1):
        text = " ".join(WORDS[:count])
        length = client.post(f"{url}/api/readout", json={"prompt": text}).json()["length"]
        if length >= tokens:
            return text
    raise SystemExit(f"the sample text is shorter than {tokens} tokens")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lens", required=True, help="a tuned lens of SmolLM2 (e.g. lens-demo)")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--stats", default="entropy,kl", help="statistics to time, in turn")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunedlens",
            "serve",
            "demo",
            "--lens",
            args.lens,
            "--port",
            str(port),
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(timeout=120) as client:
            deadline = time.time() + 600
            while time.time() < deadline:
                try:
                    client.get(f"{url}/api/health")
                    break
                except httpx.TransportError:
                    time.sleep(0.5)
            lens = client.get(f"{url}/api/lenses").json()["lenses"][1]["name"]
            prompt = prompt_of(client, url, args.tokens)
            runs = {}
            for stat in args.stats.split(","):
                body = {"prompt": prompt, "lenses": ["logit", lens], "stat": stat}
                warm = client.post(f"{url}/api/readout", json=body).json()
                assert len(warm["positions"]) >= args.tokens and len(warm["lenses"]) == 2
                times = []
                for _ in range(args.requests):
                    started = time.perf_counter()
                    response = client.post(f"{url}/api/readout", json=body)
                    times.append(time.perf_counter() - started)
                    response.raise_for_status()
                times.sort()
                runs[stat] = {
                    "p50_s": statistics.median(times),
                    "p95_s": times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
                    "min_s": times[0],
                    "max_s": times[-1],
                    "seconds": times,
                }
    finally:
        server.terminate()
        server.wait(30)
    payload = {
        "machine": machine(),
        "prompt": prompt,
        "tokens": len(warm["positions"]),
        "rows": len(warm["rows"]),
        "requests": args.requests,
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(payload, indent=2))
    table = "\n".join(
        [
            "# Web explorer latency: one readout through HTTP (SmolLM2-135M, CPU float32)",
            "",
            f"`POST /api/readout` for a {payload['tokens']}-token prompt, the logit lens and a tuned lens "
            f"side by side, {payload['rows']} rows x {payload['tokens']} positions each, full-vocabulary "
            "statistic and top-10 per cell; a warm server (model loaded, one request done), requests "
            f"one after another, timed by the client. Machine: {payload['machine']['cpu_threads']} threads.",
            "",
            "| statistic | requests | p50 (s) | p95 (s) | min (s) | max (s) | target p50 |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *[
                f"| {stat} | {args.requests} | {r['p50_s']:.3f} | {r['p95_s']:.3f} | {r['min_s']:.3f} | "
                f"{r['max_s']:.3f} | ≤ 1 s |"
                for stat, r in runs.items()
            ],
            "",
            "`entropy` (the page's default) needs no model distribution; `kl` also computes the "
            "model's own full-vocabulary distribution at every position.",
            "",
        ]
    )
    (RESULTS / "serve.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
