"""Early exit through the logit, tuned and Jacobian lenses on SmolLM2-135M (issue #23).

One teacher-forced exit table (every position of ``--tokens`` tokens of corpus/test, every row,
every lens, exact full-vocabulary readouts), then the report of several check schedules from it
(every row; every 4th row; a few late rows; one late row): per lens x measure the sweep, the oracle, and the
thresholds certified for δ = 0.05 and 0.10. Then real early-exit greedy generation of a few
prompts at one schedule (``--generate-at``, default the late rows: checking every row costs
several times the model), timed against the model's own ``generate`` in the same process.

Writes ``benchmarks/results/uses_early_exit.{json,md,png}`` and the full report of each schedule
(``early_exit.json``, CSVs, figures) under ``--out``.

    nice -n 10 python benchmarks/uses_early_exit.py --lens /path/to/tuned --lens /path/to/jlens
    python benchmarks/uses_early_exit.py --tiny     # a tiny random model: checks the script
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from common import CORPUS, RESULTS, machine

HAND = "<!-- written by hand: kept when the script rewrites this file -->"
SCHEDULES = {"every row": dict(check_every=1), "every 4th row": dict(check_every=4)}
LATE = (0.5, 0.65, 0.8, 0.9)
"""The late-rows schedule: these fractions of the depth (rows 15, 20, 24, 27 of 30)."""


def load(args):
    from tunedlens.data import pack_blocks
    from tunedlens.lenses.io.load import lens_name, load_lens

    if args.tiny:
        from tiny_models import random_lens, tiny_model

        model = tiny_model("llama")
        lenses = {"tuned": random_lens(model), "tuned-b": random_lens(model, scale=0.05)}
        tokens = torch.randint(
            3,
            120,
            (args.tokens // args.seq_len, args.seq_len),
            generator=torch.Generator().manual_seed(0),
        )
        return model, _TinyTokenizer(), lenses, tokens
    from tunedlens import load_model

    model, tokenizer = load_model(args.model)
    lenses = {}
    for location in args.lens:
        lenses[lens_name(location, {"logit", *lenses})] = load_lens(location, model)
    blocks = pack_blocks(
        str(CORPUS / "test.jsonl.gz"),
        tokenizer,
        seq_len=args.seq_len,
        n_sequences=args.tokens // args.seq_len,
    )
    return model, tokenizer, lenses, blocks.tokens


class _TinyTokenizer:
    """Words ``w<id>`` for the tiny vocabulary (the script's own check needs no real tokenizer)."""

    def decode(self, tokens):
        return " ".join(f"w{t}" for t in tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--lens", action="append", default=[], help="A lens location (repeat).")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--generate", type=int, default=32, help="New tokens per prompt.")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument(
        "--generate-at",
        default="late rows",
        choices=[*SCHEDULES, "late rows", "one late row"],
        help="The check schedule of the generations (checks at every row cost "
        "several times the model: slow).",
    )
    parser.add_argument(
        "--generate-threads",
        type=int,
        default=1,
        help="Torch threads while generating: batch-1 decoding on a shared CPU "
        "runs ~10x slower with two threads waiting on each other.",
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/uses_early_exit"))
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="Where uses_early_exit.{json,md,png} go (default benchmarks/results; --out with --tiny).",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="A tiny random model: checks the script."
    )
    args = parser.parse_args()
    from tunedlens.analyze.exit_analysis import summarise_exit
    from tunedlens.analyze.exit_generate import compare_generation
    from tunedlens.lenses.lens import LogitLens

    started = time.perf_counter()
    model, tokenizer, lenses, tokens = load(args)
    n_blocks = len(LogitLens(model).unembed.arch.layers)
    schedules = dict(SCHEDULES)
    schedules["late rows"] = dict(
        check_rows=sorted({min(n_blocks - 1, round(f * n_blocks)) for f in LATE})
    )
    schedules["one late row"] = dict(check_rows=[min(n_blocks - 1, round(0.8 * n_blocks))])
    table = measured(model, lenses, tokens, args.out)
    reports = {}
    for name, schedule in schedules.items():
        report = summarise_exit(table, **schedule)
        out = args.out / name.replace(" ", "-")
        shutil.rmtree(out, ignore_errors=True)
        report.save(out)
        reports[name] = report.to_dict()
    best = args.generate_at
    generation = None
    if args.generate:
        test = list(range(1, tokens.shape[0], 2))[: args.prompts]
        prompts = [tokens[i, : args.prompt_tokens] for i in test]
        print(
            f"generating at the schedule {best!r} with {args.generate_threads} thread(s)",
            flush=True,
        )
        torch.set_num_threads(args.generate_threads)
        generation = compare_generation(
            model,
            {"logit": LogitLens(model), **lenses},
            reports[best],
            prompts,
            args.generate,
            tokenizer=tokenizer,
            delta=0.1,
        )
    elapsed = time.perf_counter() - started
    table_md, payload = tabulate(reports, generation, best, args, elapsed)
    results = args.results or (args.out if args.tiny else RESULTS)  # --tiny checks the script only
    results.mkdir(parents=True, exist_ok=True)
    (results / "uses_early_exit.json").write_text(json.dumps(payload, indent=2))
    path = results / "uses_early_exit.md"
    kept = path.read_text().split(HAND, 1) if path.exists() else []
    path.write_text(table_md + ("\n" + HAND + kept[1] if len(kept) == 2 else ""))
    figure(reports, results / "uses_early_exit.png")
    print(table_md)


def measured(model, lenses: dict, tokens: torch.Tensor, out: Path):
    """The exit table of every lens, one lens at a time, each kept in ``out`` (a rerun reuses it).

    Lenses become available at different times (a J-lens fit takes long): the run can start with
    the ones there are. Each table also holds the logit lens; the first one's is kept.
    """
    from dataclasses import asdict, fields

    import numpy as np

    from tunedlens.analyze.exit_analysis import ExitTable, LensTable, exit_table

    out.mkdir(parents=True, exist_ok=True)
    key = f"{tokens.shape[0]}x{tokens.shape[1]}-{int(tokens.sum())}"
    merged = None
    for name, lens in lenses.items():
        path = out / f"table-{name}-{key}.npz"
        if path.exists():
            stored = dict(np.load(path, allow_pickle=False))
            meta = json.loads(str(stored.pop("meta")))
            tables = {
                lens_name: LensTable(
                    **{
                        f.name: stored[f"{lens_name}.{f.name}"]
                        if f.name not in ("kind", "source")
                        else meta["lenses"][lens_name][f.name]
                        for f in fields(LensTable)
                    }
                )
                for lens_name in meta["lenses"]
            }
            from tunedlens.analyze.compute import compute_model

            table = ExitTable(
                **meta["table"],
                compute=compute_model(model),
                lenses=tables,
                **{
                    k: stored[k]
                    for k in ("context", "calibration", "model_top1", "model_ce_bits", "saturation")
                },
            )
            print(f"exit table of {name}: reused {path}", flush=True)
        else:
            table = exit_table(
                model,
                {name: lens},
                tokens,
                progress=lambda done, total, name=name: print(
                    f"  {name}: {done}/{total} sequences", flush=True
                ),
            )
            arrays = {
                k: getattr(table, k)
                for k in ("context", "calibration", "model_top1", "model_ce_bits", "saturation")
            }
            for lens_name, lens_table in table.lenses.items():
                arrays.update(
                    {
                        f"{lens_name}.{k}": v
                        for k, v in asdict(lens_table).items()
                        if k not in ("kind", "source")
                    }
                )
            meta = {
                "table": {
                    k: getattr(table, k)
                    for k in (
                        "model",
                        "model_type",
                        "n_blocks",
                        "split",
                        "sequences",
                        "seq_len",
                        "elapsed_s",
                    )
                },
                "lenses": {
                    n: {"kind": t.kind, "source": t.source} for n, t in table.lenses.items()
                },
            }
            np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
            print(
                f"exit table of {name}: {table.n_tokens} tokens in {table.elapsed_s:.0f} s",
                flush=True,
            )
        if merged is None:
            merged = table
        else:
            merged.lenses[name] = table.lenses[name]
            merged.elapsed_s += table.elapsed_s
    return merged


def _best_saving(metrics: dict, delta: str) -> tuple[float, str, str]:
    """The largest certified test saving over lenses x measures: ``(saved, lens, measure)``."""
    best = (-float("inf"), "", "")
    for lens, measures in metrics["calibration"]["results"].items():
        for measure, by_delta in measures.items():
            result = by_delta.get(delta, {})
            if result.get("certified") and result["test"]["saved"] > best[0]:
                best = (result["test"]["saved"], lens, measure)
    return best


def tabulate(
    reports: dict, generation: dict | None, best: str, args, elapsed: float
) -> tuple[str, dict]:
    first = next(iter(reports.values()))
    compute = first["compute"]
    n = first["n_blocks"]
    block = compute["blocks"][0]["fixed_macs"]
    lines = [
        f"# Early exit on {first['model']} (issue #23)",
        "",
        f"{first['tokens']:,} teacher-forced tokens of corpus/test ({first['sequences']} x "
        f"{first['seq_len']}; calibration on the even-numbered sequences, test on the odd), every "
        f"row 0..{n} read exactly by every lens. The full model costs "
        f"{compute['full_macs_per_token'] / 1e6:.1f} M MACs per token; one head "
        f"{compute['head_macs'] / 1e6:.1f} M = {compute['head_macs'] / block:.1f} blocks' "
        "projections and MLP, paid again by every decoding check. Saved compute is net of every "
        "check and of the K/V propagation of skipped blocks. Certified: agreement with the "
        f"model's top-1 ≥ 1 − δ with confidence 0.95 ({first['calibration']['bound']}, "
        "fixed-sequence testing), measured on the test sequences.",
        "",
        "## Oracle: prediction depth (the upper bound of each lens)",
        "",
        "Saved compute of exiting exactly at each token's depth (no checks), and at the first check "
        "row at or after it.",
        "",
        "| lens | mean depth (rows) | oracle saved | "
        + " | ".join(f"at {name}" for name in list(reports)[1:])
        + " |",
        "| --- | ---: | ---: |" + " ---: |" * (len(reports) - 1),
    ]
    for lens, entry in first["lenses"].items():
        scheduled = [
            m["lenses"][lens]["oracle_on_schedule"]["saved"] for m in list(reports.values())[1:]
        ]
        lines.append(
            f"| {lens} | {entry['oracle']['rows_used']:.2f} of {n} | {entry['oracle']['saved']:.1%} | "
            + " | ".join(f"{v:.1%}" for v in scheduled)
            + " |"
        )
    for name, metrics in reports.items():
        lines += [
            "",
            f"## Checks at {name} (rows {_rows(metrics['check_rows'])})",
            "",
            "Certified thresholds on the test sequences: agreement / net saved / rows used "
            "(✗: the test agreement fell below 1 − δ).",
            "",
            "| lens | measure | δ = 0.05 | δ = 0.10 |",
            "| --- | --- | --- | --- |",
        ]
        for lens, measures in metrics["calibration"]["results"].items():
            for measure, by_delta in measures.items():
                cells = []
                for delta in ("0.05", "0.1"):
                    result = by_delta[delta]
                    if not result["certified"]:
                        cells.append("none certified")
                        continue
                    test = result["test"]
                    mark = "" if result["test_holds"] else " ✗"
                    cells.append(
                        f"{test['agreement']:.3f}{mark} / {test['saved']:+.1%} / {test['rows_used']:.1f} "
                        f"(τ={result['threshold']:.6g})"
                    )
                lines.append(f"| {lens} | {measure} | {cells[0]} | {cells[1]} |")
        saved, lens, measure = _best_saving(metrics, "0.1")
        lines += ["", f"Best certified (δ = 0.10): {lens} / {measure}, {saved:+.1%} net."]
    if generation:
        full = generation["full"]
        lines += [
            "",
            f"## Greedy generation ({len(generation['prompts'])} prompts x {generation['new_tokens']} tokens, "
            f"checks at {best}, thresholds certified for δ = 0.10)",
            "",
            f"The model's own `generate`: {full['tokens_per_s']:.1f} tokens/s; the exit driver with no "
            f"exit: {full['driver_tokens_per_s']:.1f} tokens/s, output identical to `generate` for "
            f"{full['driver_identical']:.0%} of prompts. Batch 1, wall time, prefill included, "
            f"{generation['threads']} torch thread(s), on a 2-core CPU shared with other jobs: speed "
            "ratios are rough. Rows used and counted saved are per generated token.",
            "",
            "| lens | measure | τ | identical | first difference | rows used | counted saved | tokens/s | speed-up | propagation |",
            "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for run in generation["runs"]:
            if run.get("threshold") is None:
                lines.append(f"| {run['lens']} | {run['measure']} | none certified | | | | | | | |")
                continue
            first_diff = ", ".join("–" if d is None else str(d) for d in run["first_difference"])
            lines.append(
                f"| {run['lens']} | {run['measure']} | {run['threshold']:.6g} | {run['identical']:.0%} | "
                f"{first_diff} | {run['rows_used']:.1f} | {run['saved']:+.1%} | {run['tokens_per_s']:.1f} | "
                f"{run['speedup']:.2f}x | {run['propagation']} |"
            )
    lines += [
        "",
        f"Exit table {first['elapsed_s'] / 60:.1f} min (kept in `{args.out}` and reused by later "
        f"runs); this run {elapsed / 60:.1f} min; on a shared CPU. Per-schedule reports (JSON, "
        f"CSV, figures) in `{args.out}`.",
        "",
    ]
    payload = {
        "schedules": {
            name: {
                "check_rows": m["check_rows"],
                "lenses": m["lenses"],
                "calibration": m["calibration"],
            }
            for name, m in reports.items()
        },
        "compute": compute,
        "generation": generation,
        "generation_schedule": best,
        "tokens": first["tokens"],
        "elapsed_s": elapsed,
        "machine": machine(),
    }
    return "\n".join(lines) + "\n", payload


def _rows(rows: list[int]) -> str:
    if len(rows) > 6:
        return f"{rows[0]}..{rows[-1]}" + (
            f" every {rows[1] - rows[0]}" if rows[1] - rows[0] > 1 else ""
        )
    return ", ".join(map(str, rows))


def figure(reports: dict, path: Path, floor: float = 0.5) -> None:
    """Agreement against net saved for the max-prob and saturation sweeps, one panel per schedule.

    Only agreement >= ``floor`` is drawn (lower is no use as an exit), and each panel's x range
    covers the points drawn, so the region around zero saved stays readable; the dashed lines
    are the agreement targets 1 - δ that the certified thresholds aim at.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(reports), figsize=(4.3 * len(reports), 4.8), sharey=True, squeeze=False
    )
    for axis, (name, metrics) in zip(axes[0], reports.items(), strict=True):
        shown = [0.0]
        for index, (lens, entry) in enumerate(metrics["lenses"].items()):
            color = f"C{index}"
            for measure, style in (("max-prob", "-"), ("saturation", ":")):
                sweep = entry["measures"][measure]
                saved = [100 * s for s in sweep["saved"]]
                shown += [x for x, a in zip(saved, sweep["agreement"], strict=True) if a >= floor]
                axis.plot(
                    saved,
                    sweep["agreement"],
                    style,
                    marker=".",
                    color=color,
                    label=f"{lens}: {measure}",
                )
            oracle = entry["oracle_on_schedule"]
            shown.append(100 * oracle["saved"])
            axis.scatter(
                [100 * oracle["saved"]],
                [oracle["agreement"]],
                marker="*",
                s=200 - 50 * index,
                color=color,
                edgecolor="black",
                zorder=5 + index,
                label=f"{lens}: oracle",
            )
        pad = 0.06 * (max(shown) - min(shown)) + 1
        axis.set_xlim(min(shown) - pad, max(shown) + pad)
        axis.set_ylim(floor, 1.02)
        axis.axvline(0, color="grey", linewidth=0.8)
        for delta in (0.05, 0.10):
            axis.axhline(1 - delta, color="grey", linestyle="--", linewidth=0.6)
        axis.set(title=f"checks at {name}", xlabel="net compute saved (%)")
        axis.grid(alpha=0.3)
    for delta in (0.05, 0.10):
        axes[0][-1].annotate(
            f"1 − δ = {1 - delta:.2f}",
            (1.0, 1 - delta),
            xycoords=("axes fraction", "data"),
            xytext=(-3, 2),
            textcoords="offset points",
            ha="right",
            fontsize=7,
            color="grey",
        )
    axes[0][0].set_ylabel("top-1 agreement with the model")
    handles, labels = axes[0][0].get_legend_handles_labels()
    n_lenses = len(next(iter(reports.values()))["lenses"])
    fig.legend(handles, labels, loc="lower center", ncol=n_lenses, fontsize=8)
    fig.suptitle(
        "Early exit on SmolLM2-135M: top-1 agreement against compute saved net of every check "
        "(max-prob and saturation sweeps; stars: each lens's oracle at the schedule's rows)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
