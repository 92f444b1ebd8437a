"""What ``--data self`` costs: tokens/s of sampling (batched, KV cache) against the bare forward pass.

On SmolLM2 (``demo``, float32, CPU). For each batch size, ``sample_documents`` samples one batch
of documents of ``--doc-tokens`` new tokens (the code ``--data self`` runs), and the model's bare
forward pass (``use_cache=False``, no lens) runs over the same number of tokens: the sampled
documents as blocks, 8 sequences per call. The forward pass is timed before and after the
sampling and averaged, because a shared machine's speed drifts; wall time and this process's CPU
time (user + system, all threads) are both reported, the CPU time being the steadier on a busy
machine. Then the whole path once: ``sample_self_text`` into an empty cache, and again (reused).

    nice -n 10 python benchmarks/self_data_cost.py [--batch-sizes 8 32] [--doc-tokens 64]

Writes ``benchmarks/results/self_data_cost.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from common import machine, save

from tunedlens.data import SelfTextSettings, sample_self_text
from tunedlens.data.self_text import model_fingerprint, sample_documents
from tunedlens.models import load_model


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


@torch.no_grad()
def forward(model, blocks: torch.Tensor) -> tuple[float, float]:
    start = clocks()
    for chunk in blocks.split(8):
        model(input_ids=chunk, use_cache=False)
    return since(start)


def blocks_of(tokenizer, documents: list[dict], width: int) -> torch.Tensor:
    """The sampled documents' tokens, EOS-joined and cut into rows of ``width``."""
    ids = []
    for document in documents:
        ids += tokenizer(document["text"], add_special_tokens=False)["input_ids"]
        ids.append(tokenizer.eos_token_id)
    rows = len(ids) // width
    return torch.tensor(ids[: rows * width]).view(rows, width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--doc-tokens", type=int, default=64)
    parser.add_argument("--end-to-end-tokens", type=int, default=1024)
    args = parser.parse_args()
    load_before = os.getloadavg()
    model, tokenizer = load_model("demo")
    start = clocks()
    model_fingerprint(model)
    fingerprint_wall, _ = since(start)
    rows = []
    for batch in args.batch_sizes:
        settings = SelfTextSettings(batch_size=batch, seed=0)
        probe = blocks_of(
            tokenizer, [{"text": "The capital of France is Paris. " * 40}], args.doc_tokens
        )
        forward(model, probe[:1])  # warm
        start = clocks()
        documents = sample_documents(
            model, tokenizer, settings, 0, batch, doc_tokens=args.doc_tokens
        )
        sample_wall, sample_cpu = since(start)
        sampled = sum(d["new_tokens"] + (d["stop"] == "eos") for d in documents)
        blocks = blocks_of(tokenizer, documents, args.doc_tokens)
        before = forward(model, blocks)
        after = forward(model, blocks)
        forward_wall = (before[0] + after[0]) / 2
        forward_cpu = (before[1] + after[1]) / 2
        forward_tokens = blocks.numel()
        row = {
            "batch_size": batch,
            "doc_tokens": args.doc_tokens,
            "sampled_tokens": sampled,
            "steps_rows": batch * max(d["new_tokens"] + (d["stop"] == "eos") for d in documents),
            "sample_wall_s": sample_wall,
            "sample_cpu_s": sample_cpu,
            "sample_tokens_per_s": sampled / sample_wall,
            "forward_tokens": forward_tokens,
            "forward_wall_s": forward_wall,
            "forward_cpu_s": forward_cpu,
            "forward_tokens_per_s": forward_tokens / forward_wall,
            "ratio_wall": (sample_wall / sampled) / (forward_wall / forward_tokens),
            "ratio_cpu": (sample_cpu / sampled) / (forward_cpu / forward_tokens),
        }
        rows.append(row)
        print(row, flush=True)
    with tempfile.TemporaryDirectory() as folder:
        settings = SelfTextSettings(
            tokens=args.end_to_end_tokens,
            batch_size=max(args.batch_sizes),
            doc_tokens=args.doc_tokens,
            cache_dir=Path(folder),
        )
        start = clocks()
        first = sample_self_text(model, tokenizer, settings, tokens_needed=0)
        first_wall, first_cpu = since(start)
        start = clocks()
        again = sample_self_text(model, tokenizer, settings, tokens_needed=0)
        again_wall, _ = since(start)
        assert again.sampled_documents == 0
        end_to_end = {
            "tokens_asked": args.end_to_end_tokens,
            "tokens_packed": first.n_tokens,
            "documents": first.n_documents,
            "batch_size": settings.batch_size,
            "first_wall_s": first_wall,
            "first_cpu_s": first_cpu,
            "tokens_per_s": first.n_tokens / first_wall,
            "reuse_wall_s": again_wall,
            "cache_bytes": first.path.stat().st_size,
        }
    load_after = os.getloadavg()
    payload = {
        "model": "demo (SmolLM2-135M-Instruct, float32)",
        "machine": machine(),
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": load_after,
        "fingerprint_s": fingerprint_wall,
        "rows": rows,
        "end_to_end": end_to_end,
    }
    lines = [
        "# Cost of `--data self` on SmolLM2 (CPU)",
        "",
        f"Machine: {machine()['platform']}, {machine()['cpu_threads']} torch threads, "
        + (
            "**the CPU shared** with other jobs"
            if max(load_before[0], load_after[0]) > os.cpu_count()
            else "otherwise quiet"
        )
        + f" (load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on "
        f"{os.cpu_count()} cores); on a shared CPU the CPU time of this process is the steadier "
        "measure. Small scale "
        f"({args.doc_tokens} new tokens per document). Run with "
        "`nice -n 10 python benchmarks/self_data_cost.py`.",
        "",
        "Sampling: `sample_documents` (batched, KV cache, one forward step per new token). "
        "Forward: the bare forward pass (`use_cache=False`, no lens) over the same number of "
        "tokens of the sampled text, 8 sequences per call, timed before and after the sampling.",
        "",
        "| batch | tokens sampled | sampling tok/s | forward tok/s | cost per token, wall | "
        "cost per token, CPU |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['batch_size']} | {row['sampled_tokens']:,} | "
            f"{row['sample_tokens_per_s']:.1f} | {row['forward_tokens_per_s']:.1f} | "
            f"{row['ratio_wall']:.1f}x | {row['ratio_cpu']:.1f}x |"
        )
    lines += [
        "",
        f"End to end (`sample_self_text`, batch {end_to_end['batch_size']}, into an empty cache): "
        f"{end_to_end['tokens_packed']:,} tokens in {end_to_end['first_wall_s']:.0f} s wall "
        f"({end_to_end['first_cpu_s']:.0f} s CPU), {end_to_end['tokens_per_s']:.1f} tok/s; "
        f"the second call reused the cache in {end_to_end['reuse_wall_s']:.1f} s, most of it the "
        f"model fingerprint (timed alone at the start: {payload['fingerprint_s']:.1f} s); the file is "
        f"{end_to_end['cache_bytes'] / 1024:.0f} KiB.",
        "",
    ]
    save("self_data_cost", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
