"""Choose the default recipe by measurement: equal token budgets on SmolLM2, CPU, float32.

Each candidate trains on the same shuffled blocks of corpus/train and is scored by exact KL
(every token, every layer) on corpus/validation. Prints and saves benchmarks/results/recipes.*.
Usage: python benchmarks/recipes.py [--tokens 65536]
"""

from __future__ import annotations

import argparse
import time

from common import CORPUS, bits, machine, save

from tunedlens import TunedLens, load_model
from tunedlens.data import pack_blocks
from tunedlens.engine import layer_kl
from tunedlens.train import recipe_config, train_lens
from tunedlens.train.lstsq import lstsq_init

CANDIDATES = {
    "lstsq + adamw 1e-3 (default)": dict(recipe="default"),
    "lstsq only (no gradient steps)": None,
    "adamw 1e-3, identity init": dict(recipe="default", lstsq_init=False),
    "lstsq + adamw 3e-3": dict(recipe="default", lr=3e-3),
    "paper sgd, 16 positions/seq": dict(recipe="paper", positions_per_sequence=16),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2**16)
    parser.add_argument("--val-sequences", type=int, default=8)
    args = parser.parse_args()
    model, tokenizer = load_model("demo")
    train = pack_blocks(
        str(CORPUS / "train.jsonl.gz"),
        tokenizer,
        seq_len=512,
        n_sequences=args.tokens // 512,
        seed=0,
    )
    val = pack_blocks(
        str(CORPUS / "validation.jsonl.gz"),
        tokenizer,
        seq_len=512,
        n_sequences=args.val_sequences,
        seed=1,
    )
    results = {}
    for name, settings in CANDIDATES.items():
        lens = TunedLens.from_model(model)
        started = time.perf_counter()
        if settings is None:
            base = recipe_config("default")
            lstsq_init(lens, model, train.tokens[: base.lstsq_tokens // 512])
        else:
            settings = dict(settings)
            config = recipe_config(
                settings.pop("recipe"), tokens=args.tokens, tokens_per_step=4096, **settings
            )
            train_lens(lens, model, train, config)
        wall = time.perf_counter() - started
        kl = bits(layer_kl(lens, model, val.tokens))
        results[name] = {"wall_s": wall, "kl_bits": kl, "mean_kl_bits": sum(kl) / len(kl)}
        print(f"{name}: {wall:.0f}s mean KL {sum(kl) / len(kl):.3f} bits", flush=True)
    logit = bits(layer_kl(TunedLens.from_model(model), model, val.tokens))
    results["logit lens (untrained)"] = {
        "wall_s": 0.0,
        "kl_bits": logit,
        "mean_kl_bits": sum(logit) / len(logit),
    }
    lines = [
        f"# Recipe selection: SmolLM2-135M, CPU float32, {args.tokens:,} training tokens",
        "",
        f"Exact KL(model ‖ lens) in bits on {args.val_sequences} x 512 validation tokens.",
        "",
        "| candidate | wall s | mean KL | layer 0 | layer 10 | layer 20 | layer 29 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        k = r["kl_bits"]
        lines.append(
            f"| {name} | {r['wall_s']:.0f} | {r['mean_kl_bits']:.3f} | {k[0]:.2f} | {k[10]:.2f} | {k[20]:.2f} | {k[29]:.2f} |"
        )
    save(
        "recipes",
        {"machine": machine(), "tokens": args.tokens, "results": results},
        "\n".join(lines) + "\n",
    )


if __name__ == "__main__":
    main()
