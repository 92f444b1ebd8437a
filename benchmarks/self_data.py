"""Does text from the model itself make a better lens? (issue #26, item 2)

Three tuned lenses of SmolLM2 (``demo``), each a whole ``tunedlens train`` process under the
same ``--time-budget`` (the wall time of the process, loading and sampling included):

- ``self``: ``--data self`` into an empty ``--self-cache``, so sampling counts against the budget.
  The amount, ``--self-tokens``, is the share ``--self-share`` of the budget times the sampling
  rate of ``benchmarks/results/self_data_cost.json`` (its largest batch), so that sampling takes
  about that share and training the rest;
- ``corpus/train``: human text (the shared corpus's training split);
- ``kjv``: the King James Bible (today's demo default).

Each lens is scored by ``tunedlens eval`` (exact KL(model ‖ lens) in bits per layer, the logit
lens beside them) on held-out text: English prose from ``corpus/test`` (Austen, Shakespeare, the
Jargon File), self-generated text of another seed (``--self-seed 1``, never trained on), and on
the prompt suite (KL at the answer position, mean over prompts).

    nice -n 10 python benchmarks/self_data.py --work /tmp/self-data --budget 600

Writes ``benchmarks/results/self_data.{md,json,png}``. Rerunning skips the lenses already trained
in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import CORPUS, RESULTS, machine, save
from demo_corpus import held_out_files

ARMS = ("self", "corpus/train", "kjv")


def tunedlens(args: list[str], log: Path) -> float:
    """Run ``python -m tunedlens ARGS`` (output to ``log``); its wall time in seconds."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        subprocess.run(
            [sys.executable, "-m", "tunedlens", *args],
            check=True,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    return time.perf_counter() - start


def sampling_rate() -> float:
    """Tokens/s of sampling on this machine, from the cost benchmark (its largest batch)."""
    cost = json.loads((RESULTS / "self_data_cost.json").read_text())
    return max(cost["rows"], key=lambda row: row["batch_size"])["sample_tokens_per_s"]


def train_arms(
    work: Path, budget: float, self_tokens: int, settings: list[str], self_options: list[str]
) -> dict:
    wall = json.loads((work / "wall.json").read_text()) if (work / "wall.json").exists() else {}
    data = {
        "self": [
            *("--data", "self", "--self-tokens", str(self_tokens)),
            *("--self-cache", str(work / "cache-train"), *self_options),
        ],
        "corpus/train": ["--data", str(CORPUS / "train.jsonl.gz")],
        "kjv": ["--data", "kjv"],
    }
    for arm in ARMS:
        out = work / arm.replace("/", "-")
        if (out / "provenance.json").exists():
            continue
        args = ["train", "demo", *data[arm], "--out", str(out), "--force"]
        args += ["--time-budget", f"{budget:.0f}s", *settings]
        wall[arm] = tunedlens(args, work / f"train-{arm.replace('/', '-')}.log")
        (work / "wall.json").write_text(json.dumps(wall, indent=2))
    return wall


def score(work: Path, tokens: int, seq_len: int, self_options: list[str]) -> dict:
    lenses = [arg for arm in ARMS for arg in ("--lens", str(work / arm.replace("/", "-")))]
    prose = held_out_files(work)["English prose"]
    sets = {
        "English prose (corpus/test)": ["--data", str(prose), "--prompts", "default"],
        "self text, seed 1": [
            *("--data", "self", "--self-seed", "1", "--self-cache", str(work / "cache-test")),
            *self_options,
            *("--prompts", "none"),
        ],
    }
    reports = {}
    for name, data in sets.items():
        out = work / ("eval-" + name.split()[0].lower())
        if not (out / "metrics.json").exists():
            args = ["eval", "demo", *lenses, *data, "--tokens", str(tokens)]
            args += ["--seq-len", str(seq_len), "--bootstrap", "0", "--no-plots"]
            tunedlens([*args, "--out", str(out), "--force"], work / f"{out.name}.log")
        reports[name] = json.loads((out / "metrics.json").read_text())
    return reports


def label(location: str) -> str:
    name = Path(location).name
    return {"corpus-train": "corpus/train"}.get(name, name)


def figure(per_layer: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(per_layer), figsize=(6 * len(per_layer), 4), sharey=True)
    for axis, (held_out, lenses) in zip(axes, per_layer.items(), strict=True):
        for name, kl in lenses.items():
            axis.plot(range(len(kl)), kl, label=name, linestyle="--" if name == "logit" else "-")
        axis.set_title(held_out)
        axis.set_xlabel("layer")
        axis.set_yscale("log")
    axes[0].set_ylabel("KL(model ‖ lens), bits")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/self-data"))
    parser.add_argument("--budget", type=float, default=600.0, help="seconds per training process")
    parser.add_argument("--self-share", type=float, default=0.5)
    parser.add_argument(
        "--self-options",
        default="",
        help="more --self-* options, for training and the held-out self text alike",
    )
    parser.add_argument(
        "--name", default="self_data", help="results file name (a trial run: another name)"
    )
    parser.add_argument(
        "--rate", type=float, help="sampling tokens/s (default: from self_data_cost.json)"
    )
    parser.add_argument(
        "--conditions",
        default="shared with other jobs",
        help="what else ran on the machine while the lenses trained (goes into the report)",
    )
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument(
        "--train-options",
        default="",
        help="more train options, the same for every lens (a small run: "
        "'--tokens-per-step 2048 --val-tokens 512')",
    )
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    rate = args.rate or sampling_rate()
    self_tokens = max(args.seq_len * 2, int(args.self_share * args.budget * rate))
    settings = ["--seq-len", str(args.seq_len), *args.train_options.split()]
    self_options = args.self_options.split()
    wall = train_arms(work, args.budget, self_tokens, settings, self_options)
    reports = score(work, args.eval_tokens, args.seq_len, self_options)
    per_layer, means, provenance = {}, {}, {}
    for held_out, report in reports.items():
        per_layer[held_out] = {
            label(name): entry["kl_bits"][:-1] for name, entry in report["lenses"].items()
        }
        means[held_out] = {name: sum(kl) / len(kl) for name, kl in per_layer[held_out].items()}
    suite = {}
    kpis = reports["English prose (corpus/test)"].get("kpis", {})
    for name, entry in kpis.items():
        series = entry["answer_kl_bits"]
        layers = len(series[0]) - 1
        suite[label(name)] = sum(sum(s[:layers]) / layers for s in series) / len(series)
    for arm in ARMS:
        record = json.loads((work / arm.replace("/", "-") / "provenance.json").read_text())
        training = record["training"]
        provenance[arm] = {
            "trained_tokens": training["trained_tokens"],
            "lstsq_tokens": training["lstsq_tokens"],
            "steps": training["steps_done"],
            "wall_s": wall.get(arm),
            "self_text": training.get("self_text"),
        }
    payload = {
        "machine": machine(),
        "budget_s": args.budget,
        "self_tokens": self_tokens,
        "sampling_tokens_per_s": rate,
        "eval_tokens": args.eval_tokens,
        "train_options": settings,
        "self_options": self_options,
        "arms": provenance,
        "mean_kl_bits": means,
        "per_layer_kl_bits": per_layer,
        "prompt_suite_answer_kl_bits": suite,
    }
    figure(per_layer, RESULTS / f"{args.name}.png")
    names = list(next(iter(per_layer.values())))
    lines = [
        "# Lenses from the model's own text vs human text (SmolLM2, equal wall time)",
        "",
        f"Each lens: one `tunedlens train demo --time-budget {args.budget:.0f}s "
        f"{' '.join(settings)}` process "
        f"(sampling included for `self`: {self_tokens:,} tokens asked, about "
        f"{args.self_share:.0%} of the budget at {rate:.1f} tok/s). Scored by `tunedlens eval` "
        f"on {args.eval_tokens:,} held-out tokens of each set, exact KL in bits, mean over "
        f"layers; prompt suite: KL at the answer position, mean over prompts and layers. "
        f"Machine: {machine()['platform']}, {args.conditions}.",
        "",
        "| lens | sampled tokens (s) | steps | trained tokens | least-squares tokens "
        "| process s | " + " | ".join(means) + " | prompt suite |",
        "| --- | ---: | ---: | ---: | ---: | ---: | "
        + " | ".join("---:" for _ in means)
        + " | ---: |",
    ]
    for name in names:
        arm = provenance.get(name, {})
        cells = " | ".join(f"{means[h][name]:.3f}" for h in means)
        sampled = (arm.get("self_text") or {}).get("tokens")
        sampled = f"{sampled:,} ({arm['self_text']['sampling_s']:.0f})" if sampled else "-"
        trained = (
            f"{arm['steps']} | {arm['trained_tokens']:,} | {arm['lstsq_tokens']:,}"
            if arm
            else "- | - | -"
        )
        seconds = f"{arm['wall_s']:.0f}" if arm.get("wall_s") else "-"
        lines.append(
            f"| {name} | {sampled} | {trained} | {seconds} | {cells} | {suite.get(name, 0):.3f} |"
        )
    for held_out, lenses in per_layer.items():
        layers = len(next(iter(lenses.values())))
        lines += ["", f"Per layer, {held_out} (bits):", ""]
        lines += ["| layer | " + " | ".join(lenses) + " |"]
        lines += ["| ---: | " + " | ".join("---:" for _ in lenses) + " |"]
        for layer in range(layers):
            cells = " | ".join(f"{kl[layer]:.3f}" for kl in lenses.values())
            lines.append(f"| {layer} | {cells} |")
    lines += ["", f"![per-layer KL]({args.name}.png)", ""]
    save(args.name, payload, "\n".join(lines))


if __name__ == "__main__":
    main()
