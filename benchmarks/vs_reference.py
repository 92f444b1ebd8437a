"""Ours vs the reference tuned-lens 0.2.0 at equal wall-clock time (SmolLM2-135M, CPU, float32).

1. Builds the reference's venv (shared/peer/setup.sh) and runs it with the fp32 patch.
2. Both train on the same documents of corpus/train; the reference for --ref-steps steps of 2,048
   tokens (its README settings); ours with the default recipe and a token budget sized so its whole
   run (load, packing, least squares, training, validation) takes no longer than the reference's.
3. Both lenses and the logit lens are scored with exact KL per layer, in bits, on corpus/test.
Prints and saves benchmarks/results/vs_reference.*.
Usage: python benchmarks/vs_reference.py [--ref-steps 8] [--test-sequences 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import CORPUS, PEER, RESULTS, bits, first_documents, machine, save

from tunedlens import LogitLens, load_lens, load_model
from tunedlens.data import pack_blocks
from tunedlens.engine import layer_kl
from tunedlens.models import _gguf_cache_dir, demo_gguf_path

WORK = Path(os.environ.get("TUNEDLENS_BENCH_DIR", "/tmp/tunedlens-bench"))


def model_dir() -> Path:
    """The dequantised demo model, with a config the reference's transformers 4.x reads right.

    transformers 5 writes ``rope_parameters``; transformers 4 reads ``rope_theta`` and would
    silently fall back to 10,000 (SmolLM2 uses 100,000), so both keys are written. Its tokenizer
    class name ``TokenizersBackend`` is also unknown to transformers 4: the same tokenizer.json
    loads there as ``PreTrainedTokenizerFast``.
    """
    load_model("demo")
    source = _gguf_cache_dir(demo_gguf_path())
    target = WORK / "smollm2"
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        link = target / item.name
        if item.name not in ("config.json", "tokenizer_config.json") and not link.exists():
            link.symlink_to(item)
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    config = json.loads((source / "config.json").read_text())
    config["rope_theta"] = config["rope_parameters"]["rope_theta"]
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def timed(command: list[str], env: dict) -> float:
    print("+", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref-steps", type=int, default=8)
    parser.add_argument("--documents", type=int, default=600)
    parser.add_argument("--test-sequences", type=int, default=16)
    parser.add_argument(
        "--reference-wall",
        type=float,
        default=None,
        help="reuse the reference lens already trained in the work dir, which took this many seconds",
    )
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    model_path, data_path = model_dir(), first_documents("train", args.documents, WORK)
    venv = (
        subprocess.run(["bash", str(PEER / "setup.sh")], check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    ref_out = WORK / "reference-lens"
    ref_wall = args.reference_wall or timed(
        [
            f"{venv}/bin/python",
            "-m",
            "tuned_lens",
            "train",
            "--model.name",
            str(model_path),
            "--data.name",
            str(data_path),
            "--split",
            "train",
            "--max_length",
            "512",
            "--num_steps",
            str(args.ref_steps),
            "--tokens_per_step",
            "2048",
            "--per_gpu_batch_size",
            "4",
            "--precision",
            "float32",
            "-o",
            str(ref_out),
        ],
        {**env, "PYTHONPATH": str(PEER)},
    )
    # Size our budget from our measured throughput so the whole run fits in the reference's time.
    throughput = json.loads((RESULTS / "throughput.json").read_text())
    seconds_per_token = 1 / throughput["train_tokens_per_s"]
    overhead = 120.0  # load, packing, final validation on 4,096 tokens, with a safety margin
    step = 2**14
    tokens = int((ref_wall - overhead) / seconds_per_token) // step * step
    ours_out = WORK / "ours-lens"
    subprocess.run(["rm", "-rf", str(ours_out)], check=True)
    ours_wall = timed(
        [
            sys.executable,
            "-m",
            "tunedlens",
            "train",
            str(model_path),
            "--data",
            str(data_path),
            "--out",
            str(ours_out),
            "--tokens",
            str(tokens),
            "--tokens-per-step",
            str(step),
        ],
        env,
    )
    model, tokenizer = load_model(str(model_path))
    test = pack_blocks(
        str(CORPUS / "test.jsonl.gz"),
        tokenizer,
        seq_len=512,
        n_sequences=args.test_sequences,
        seed=0,
    )
    lenses = {
        "logit lens": LogitLens(model),
        "reference (tuned-lens 0.2.0)": load_lens(ref_out, model),
        "ours (default recipe)": load_lens(ours_out, model),
    }
    kl = {name: bits(layer_kl(lens, model, test.tokens)) for name, lens in lenses.items()}
    ours, ref = kl["ours (default recipe)"], kl["reference (tuned-lens 0.2.0)"]
    lower_everywhere = all(o < r for o, r in zip(ours, ref, strict=True))
    lines = [
        "# Ours vs the reference at equal wall time: SmolLM2-135M, CPU float32",
        "",
        f"Reference: {args.ref_steps} steps x 2,048 tokens, {ref_wall:.0f} s. Ours: default recipe, "
        f"{tokens:,} tokens, {ours_wall:.0f} s. Both whole processes, same {args.documents} training "
        f"documents. Exact KL(model ‖ lens), bits, on {test.n_tokens:,} test tokens.",
        "",
        f"**Ours lower at every layer: {'yes' if lower_everywhere else 'NO'}**",
        "",
        "| layer | logit lens | reference | ours |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for layer in range(len(ours)):
        lines.append(
            f"| {layer} | {kl['logit lens'][layer]:.3f} | {ref[layer]:.3f} | {ours[layer]:.3f} |"
        )
    lines.append(
        f"| mean | {sum(kl['logit lens']) / len(ours):.3f} | {sum(ref) / len(ref):.3f} | {sum(ours) / len(ours):.3f} |"
    )
    payload = {
        "machine": machine(),
        "reference_wall_s": ref_wall,
        "ours_wall_s": ours_wall,
        "ours_tokens": tokens,
        "reference_tokens": args.ref_steps * 2048,
        "kl_bits": kl,
        "ours_lower_at_every_layer": lower_everywhere,
    }
    save("vs_reference", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
