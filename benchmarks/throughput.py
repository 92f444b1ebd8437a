"""Training throughput and memory vs the model's own forward pass (SmolLM2-135M, CPU, float32).

In one process: the bare forward pass (no grad, logits included) over T tokens, then the default
recipe training over the same T tokens (least-squares statistics on T/16 tokens, the recipe's
proportion, counted in). Peak RSS is measured in separate processes (model + forward alone, and
training). Prints and saves benchmarks/results/throughput.*.
Usage: python benchmarks/throughput.py [--tokens 65536]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from common import CORPUS, machine, peak_rss_mib, save

from tunedlens import TunedLens, load_model
from tunedlens.data import pack_blocks
from tunedlens.train import recipe_config, train_lens


def measure(tokens: int, mode: str) -> dict:
    model, tokenizer = load_model("demo")
    data = pack_blocks(
        str(CORPUS / "train.jsonl.gz"), tokenizer, seq_len=512, n_sequences=tokens // 512
    )
    result = {}
    if mode in ("both", "forward"):
        with torch.no_grad():
            model(data.tokens[:1, :16])  # warm-up
            started = time.perf_counter()
            for batch in data.tokens.split(8):
                model(batch)
            result["forward_s"] = time.perf_counter() - started
    if mode in ("both", "train"):
        default = recipe_config("default")
        config = recipe_config(
            "default",
            tokens=tokens,
            tokens_per_step=4096,
            lstsq_tokens=tokens * default.lstsq_tokens // default.tokens,
        )
        lens = TunedLens.from_model(model)
        started = time.perf_counter()
        run = train_lens(lens, model, data, config)
        result["train_s"] = time.perf_counter() - started
        result["lstsq_tokens"] = run.lstsq_tokens
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2**16)
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # child process for the memory measurement
        print(json.dumps(measure(args.tokens, args.mode)))
        return
    timing = measure(args.tokens, "both")
    memory = {}
    for mode in ("forward", "train"):
        output = subprocess.run(
            [sys.executable, __file__, "--tokens", str(8192), "--mode", mode],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        memory[mode] = json.loads(output.strip().splitlines()[-1])["peak_rss_mib"]
    ratio = timing["train_s"] / timing["forward_s"]
    payload = {
        "machine": machine(),
        "tokens": args.tokens,
        **timing,
        "ratio": ratio,
        "forward_tokens_per_s": args.tokens / timing["forward_s"],
        "train_tokens_per_s": args.tokens / timing["train_s"],
        "peak_rss_mib": memory,
        "reference_ratio_reported": 17.0,
    }
    table = "\n".join(
        [
            "# Training throughput vs the bare forward pass: SmolLM2-135M, CPU float32",
            "",
            f"{args.tokens:,} tokens, 512-token sequences, default recipe (least squares on "
            f"{timing['lstsq_tokens']:,} tokens + 16 positions/sequence), measured in one run.",
            "",
            "| | wall s | tokens/s |",
            "| --- | ---: | ---: |",
            f"| bare forward (no grad) | {timing['forward_s']:.1f} | {payload['forward_tokens_per_s']:.0f} |",
            f"| default-recipe training | {timing['train_s']:.1f} | {payload['train_tokens_per_s']:.0f} |",
            "",
            f"**Training / forward wall-time ratio: {ratio:.2f}x** (target <= 1.5x; the reference, "
            "per shared/peer/README.md: ~17x).",
            "",
            "| peak RSS (8,192 tokens, separate processes) | MiB |",
            "| --- | ---: |",
            f"| model + forward | {memory['forward']:.0f} |",
            f"| training | {memory['train']:.0f} |",
            "",
        ]
    )
    save("throughput", payload, table)


if __name__ == "__main__":
    main()
