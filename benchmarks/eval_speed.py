"""Exact evaluation speed and memory: ours vs the reference's evaluation loop (SmolLM2, CPU fp32).

Both evaluate the same lens (trained by vs_reference.py, reference format) and the logit lens on
layers 0..L-1 at full vocabulary, over --tokens tokens of corpus/test in sequences of 512, in
separate processes. Reported: whole-process wall time (load + data + loop, measured the same way
for both), ours also loop-only, and peak RSS. Ours is also run on 4 of the 30 layers to show
that peak memory does not grow with the number of layers evaluated.
Usage: python benchmarks/eval_speed.py [--tokens 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import first_documents, machine, save

PEER = Path(__file__).resolve().parents[2] / "shared" / "peer"
WORK = Path(os.environ.get("TUNEDLENS_BENCH_DIR", "/tmp/tunedlens-bench"))
HERE = Path(__file__).resolve().parent


def ours(args) -> None:
    """Child process: load, pack, evaluate; print a JSON line."""
    started = time.perf_counter()
    from tunedlens import TunedLens, evaluate, load_model
    from tunedlens.data import pack_blocks

    model, tokenizer = load_model(args.model)
    lens = TunedLens.load(args.lens, model)
    blocks = pack_blocks(args.data, tokenizer, seq_len=512, n_sequences=args.tokens // 512)
    layers = range(args.layers)
    loop_started = time.perf_counter()
    evaluate(model, {"tuned": lens}, blocks.tokens, tokenizer=tokenizer, layers=layers)
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "wall_s": done - started,
                "loop_s": done - loop_started,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def run_ours(model: Path, lens: Path, data: Path, tokens: int, layers: int) -> dict:
    command = [sys.executable, __file__, "--child", "--model", str(model), "--lens", str(lens),
               "--data", str(data), "--tokens", str(tokens), "--layers", str(layers)]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def run_reference(model: Path, lens: Path, data: Path, tokens: int) -> dict:
    venv = (
        subprocess.run(["bash", str(PEER / "setup.sh")], check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    result = WORK / "reference-eval.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(PEER)}
    subprocess.run(
        [f"{venv}/bin/python", str(HERE / "reference_eval.py"), str(result),
         "--model.name", str(model), "--data.name", str(data), "--split", "train",
         "--max_length", "512", "--tokens", str(tokens), "--lens_name", str(lens),
         "--per_gpu_batch_size", "1", "--precision", "float32", "-o", str(WORK / "reference-eval")],
        check=True, env=env,
    )  # fmt: skip
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--model")
    parser.add_argument("--lens")
    parser.add_argument("--data")
    parser.add_argument("--layers", type=int, default=30)
    args = parser.parse_args()
    if args.child:
        ours(args)
        return
    sys.path.insert(0, str(HERE))
    from vs_reference import model_dir

    model, lens, data = model_dir(), WORK / "reference-lens", first_documents("test", 200, WORK)
    if not (lens / "params.pt").exists():
        sys.exit(f"{lens} is missing: run benchmarks/vs_reference.py first (it trains that lens)")
    reference = run_reference(model, lens, data, args.tokens)
    full = run_ours(model, lens, data, args.tokens, 30)
    few = run_ours(model, lens, data, args.tokens, 4)
    speedup = reference["wall_s"] / full["wall_s"]
    lines = [
        "# Exact evaluation: ours vs the reference's eval loop (SmolLM2-135M, CPU float32)",
        "",
        f"Logit lens + one tuned lens, layers 0..29, full vocabulary (49,152), {args.tokens:,} "
        "tokens in sequences of 512. Whole processes (load, data, loop), measured the same way.",
        "",
        "| | wall (s) | per token (ms) | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: |",
        f"| reference eval loop | {reference['wall_s']:.1f} | {1e3 * reference['wall_s'] / args.tokens:.1f} | {reference['peak_rss_mib']:.0f} |",
        f"| ours, 30 layers | {full['wall_s']:.1f} | {1e3 * full['wall_s'] / args.tokens:.1f} | {full['peak_rss_mib']:.0f} |",
        f"| ours, 4 layers | {few['wall_s']:.1f} | {1e3 * few['wall_s'] / args.tokens:.1f} | {few['peak_rss_mib']:.0f} |",
        "",
        f"**Speed-up per token: {speedup:.2f}x** (ours loop only: {full['loop_s']:.1f} s). "
        f"Peak memory, 30 vs 4 layers evaluated: {full['peak_rss_mib']:.0f} vs "
        f"{few['peak_rss_mib']:.0f} MiB.",
        "",
        f"Target (issue #4): at least 2x per token. {'Met.' if speedup >= 2 else 'NOT met.'} "
        "Where the time goes (profile of ours): the float32 unembedding product (49,152 x 576 "
        "per state and lens) is ~79 % of the loop and already runs at the CPU's matrix peak "
        "(~140 GFLOP/s on 2 cores); the reference spends ~0.26 s of its ~0.47 s per lens-layer "
        "(512 tokens) on the same product, so an exact full-vocabulary evaluation cannot be "
        "more than ~2.3x faster here even with free reductions.",
    ]
    save(
        "eval_speed",
        {"machine": machine(), "tokens": args.tokens, "reference": reference, "ours_30_layers": full,
         "ours_4_layers": few, "speedup": speedup},
        "\n".join(lines) + "\n",
    )  # fmt: skip


if __name__ == "__main__":
    main()
