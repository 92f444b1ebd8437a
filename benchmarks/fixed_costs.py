"""Fixed costs of a training run against the bare forward pass, and the whole process they add up
to (issue #26 item 4): SmolLM2-135M, CPU float32.

In one process, each part timed on its own over a few 512-token sequences of corpus: the bare
forward pass (no grad, logits at every position), one optimizer step of the default recipe (8
sequences, 16 positions each), the least-squares start, the validation as it was (exact KL at
every position of 8 sequences) and as it is (exact KL at the 16 positions per sequence training
samples, over the held-out sequences the budget gets; the first validation reads the logit lens
too). The parts are then added up per token for a run of ``--tokens`` (default 131,072) as
``tunedlens train`` does it, and divided by the bare forward pass over the same tokens.

    python benchmarks/fixed_costs.py [--tokens 131072] [--rounds 1]

Saves benchmarks/results/fixed_costs.{json,md}. Time on a shared CPU is an upper bound: the
parts of one round run one after another, so their ratios are fairer than their seconds.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import CORPUS, machine, save

from tunedlens import TunedLens, load_model
from tunedlens.data import pack_blocks
from tunedlens.engine import layer_kl
from tunedlens.lenses import LogitLens
from tunedlens.train import recipe_config, train_lens
from tunedlens.train.config import validation_sequences
from tunedlens.train.loop import sampled_kl, validation_positions
from tunedlens.train.lstsq import lstsq_init


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def one_round(model, train, val, old_sequences: int) -> dict:
    tokens = train.tokens
    per_token = tokens.numel()
    config = recipe_config("default", tokens=per_token, tokens_per_step=per_token, val_tokens=0)
    lens = TunedLens.from_model(model)
    with torch.no_grad():
        model(tokens[:1, :16])  # warm-up
        forward = timed(lambda: [model(batch) for batch in tokens.split(8)])
    steps = []
    train_lens(
        lens,
        model,
        train,
        config.replace(lstsq_init=False),
        on_step=lambda stats: steps.append(stats.step_s),
    )
    lstsq = timed(lambda: lstsq_init(lens, model, tokens, batch_size=8))
    # A step whose micro-batches take their states from the least-squares start's pass.
    reused = []
    train_lens(
        TunedLens.from_model(model),
        model,
        train,
        config.replace(lstsq_init=True, lstsq_tokens=per_token, lstsq_budget_share=1.0),
        on_step=lambda stats: reused.append(stats.step_s),
    )
    old = timed(lambda: layer_kl(lens, model, val.tokens[:old_sequences], batch_size=8))
    positions = validation_positions(config, val.n_sequences)
    both = {"lens": lens, "logit": LogitLens(model)}
    first = timed(lambda: sampled_kl(both, model, val.tokens, positions, batch_size=2))
    later = timed(lambda: sampled_kl({"lens": lens}, model, val.tokens, positions, batch_size=2))
    return {
        "forward_per_token_s": forward / per_token,
        "step_per_token_s": steps[0] / per_token,
        "reused_step_per_token_s": reused[0] / per_token,
        "lstsq_per_token_s": lstsq / per_token,
        "old_validation_per_sequence_s": old / old_sequences,
        "new_validation_first_per_sequence_s": first / val.n_sequences,
        "new_validation_later_per_sequence_s": later / val.n_sequences,
    }


def whole(
    parts: dict, fixed: dict, tokens: int, lstsq_share: float, val_s: float, reuse: bool
) -> float:
    default = recipe_config("default")
    lstsq_tokens = min(default.lstsq_tokens, int(tokens * lstsq_share))
    reused = lstsq_tokens if reuse else 0  # those micro-batches skip their forward pass
    return (
        fixed["load_s"]
        + fixed["pack_per_token_s"] * tokens
        + parts["lstsq_per_token_s"] * lstsq_tokens
        + parts["reused_step_per_token_s"] * reused
        + parts["step_per_token_s"] * (tokens - reused)
        + val_s
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2**17)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--sequences", type=int, default=8, help="training sequences timed")
    parser.add_argument("--old-sequences", type=int, default=4, help="old validation, timed")
    args = parser.parse_args()
    started = time.perf_counter()
    model, tokenizer = load_model("demo")
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    train = pack_blocks(
        str(CORPUS / "train.jsonl.gz"), tokenizer, seq_len=512, n_sequences=args.sequences
    )
    pack_per_token = (time.perf_counter() - started) / train.tokens.numel()
    config = recipe_config("default", tokens=args.tokens)
    n_val = validation_sequences(config)
    # Validation cost is linear in its sequences: timed on a few, counted for all n_val.
    val = pack_blocks(
        str(CORPUS / "validation.jsonl.gz"),
        tokenizer,
        seq_len=512,
        n_sequences=max(args.old_sequences, 4),
    )
    rounds = []
    for index in range(args.rounds):
        rounds.append(one_round(model, train, val, args.old_sequences))
        print(f"round {index + 1}: {rounds[-1]}", flush=True)
    parts = {key: min(r[key] for r in rounds) for key in rounds[0]}  # least disturbed
    fixed = {"load_s": load_s, "pack_per_token_s": pack_per_token}
    tokens = args.tokens
    forward = parts["forward_per_token_s"] * tokens
    old_val = parts["old_validation_per_sequence_s"] * 8
    new_val = parts["new_validation_first_per_sequence_s"] * n_val
    share = config.lstsq_budget_share
    rows = {
        "before: validation at every position of 8 sequences": whole(
            parts, fixed, tokens, share, old_val, reuse=False
        ),
        f"validation at 16 positions of {n_val} sequences": whole(
            parts, fixed, tokens, share, new_val, reuse=False
        ),
        "**now**: and the first micro-batches reuse the least-squares start's pass": whole(
            parts, fixed, tokens, share, new_val, reuse=True
        ),
    }
    payload = {
        "machine": machine(),
        "shared_cpu": True,
        "tokens": tokens,
        "rounds": rounds,
        "parts": parts,
        "fixed": fixed,
        "validation_sequences": n_val,
        "forward_s": forward,
        "whole_s": rows,
        "ratio": {name: value / forward for name, value in rows.items()},
    }
    lines = [
        "# Fixed costs of a training run vs the bare forward pass: SmolLM2-135M, CPU float32",
        "",
        f"A run of {tokens:,} tokens (default recipe: 16 positions per sequence, least-squares "
        f"start on min(2^18, tokens x {share:g}) tokens), added up from parts each timed on its "
        f"own in one process (`benchmarks/fixed_costs.py`, {args.rounds} round(s), the fastest "
        "kept). **The 2-core CPU was shared with other jobs throughout**, so the seconds are "
        "slow and the ratios are upper bounds (each part was timed against the forward pass of "
        "the same round, minutes apart). Validations were timed on 4 sequences and counted per "
        "sequence.",
        "",
        "| part | seconds per unit | unit |",
        "| --- | ---: | --- |",
        f"| bare forward (no grad, logits at every position) | {parts['forward_per_token_s'] * 1e3:.2f} ms | token |",
        f"| one optimizer step (16 positions per sequence) | {parts['step_per_token_s'] * 1e3:.2f} ms | token |",
        f"| one step on states kept from the least-squares start | {parts['reused_step_per_token_s'] * 1e3:.2f} ms | token |",
        f"| least-squares start | {parts['lstsq_per_token_s'] * 1e3:.2f} ms | token |",
        f"| validation before: exact KL at all 512 positions | {parts['old_validation_per_sequence_s']:.2f} s | sequence |",
        f"| validation now, first (tuned and logit lens) at 16 positions | {parts['new_validation_first_per_sequence_s']:.2f} s | sequence |",
        f"| validation now, later ones (tuned lens) | {parts['new_validation_later_per_sequence_s']:.2f} s | sequence |",
        "",
        f"Whole process for {tokens:,} tokens (load {load_s:.1f} s and packing included; one "
        f"validation, at the end) against the bare forward pass over the same tokens "
        f"({forward:.0f} s):",
        "",
        "| run | whole s | × forward |",
        "| --- | ---: | ---: |",
        *[f"| {name} | {value:.0f} | {value / forward:.2f} |" for name, value in rows.items()],
        "",
    ]
    save("fixed_costs", payload, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
