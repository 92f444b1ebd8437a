"""Time the 48-prompt suite on SmolLM2-135M (logit lens + one tuned lens), float32, this CPU.

``evaluate`` runs on one 2-token sequence, so its time is the prompt suite's: every prompt, both
lenses, every row and position at full vocabulary. Run before and after a change to the readout
path: ``python benchmarks/suite_speed.py --label before`` (results/suite_speed.json keeps both).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from common import RESULTS, machine, peak_rss_mib

from tunedlens import TunedLens, evaluate, load_model, load_prompts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True, help="e.g. before / after")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model, tokenizer = load_model("demo")
    lens = TunedLens.from_model(model)
    with torch.no_grad():  # a non-identity lens, so the two lenses do different work
        for parameter in lens.translator.parameters():
            parameter.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))
    suite = load_prompts()
    tokens = torch.tensor([[1, 2]])
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        report = evaluate(
            model, {"tuned": lens}, tokens, tokenizer=tokenizer, prompts=suite, bootstrap=0
        )
        times.append(time.perf_counter() - started)
    used = report.metrics["prompts"]["used"]
    path = RESULTS / "suite_speed.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.label] = {
        "prompts": used,
        "seconds": times,
        "best_s": min(times),
        "peak_rss_mib": peak_rss_mib(),
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    lines = [
        f"| run | prompts | best of {args.repeats} (s) | peak RSS (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for label, entry in results.items():
        lines.append(
            f"| {label} | {entry['prompts']} | {entry['best_s']:.1f} | "
            f"{entry['peak_rss_mib']:.0f} |"
        )
    table = (
        "# Prompt suite time, SmolLM2-135M, logit + tuned lens, CPU float32\n\n"
        "48 prompts, every row and position of each, full vocabulary. `before`: commit "
        "b43951c, which built (rows, seq, vocab) log-probabilities per prompt and lens; "
        "`after`: the readout engine (blocked, several rows per pass).\n\n"
    )
    (RESULTS / "suite_speed.md").write_text(table + "\n".join(lines) + "\n")
    print(table + "\n".join(lines))


if __name__ == "__main__":
    main()
