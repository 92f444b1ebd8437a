"""Which blocks of SmolLM2-135M can go (issue #24): cheap scores against the measured truth.

One :func:`tunedlens.analyze.prune` run: block influence (ShortGPT), Gromov's angular distances
and each lens's KL between consecutive rows, scored on calibration tokens of corpus/validation;
every block removed alone and the removal curves ``k = 0..K`` of every method (greedy by score,
oracle, Gromov's contiguous run, truncation decoded by the logit, tuned and J-lens) measured on
corpus/test; the heal of the chosen removals at ``k = K``.

Writes the full report (JSON, CSV, figures) into ``--out`` and
``benchmarks/results/uses_prune.{json,md,png}`` plus ``uses_prune_angular.png``.

    nice -n 10 python benchmarks/uses_prune.py                          # the real run (~30 min)
    python benchmarks/uses_prune.py --sequences 2 --seq-len 64 --max-remove 2 --quick  # smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import LENSES, RESULTS, first_documents, machine, peak_rss_mib

from tunedlens.serialize import dumps


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--tuned", type=Path, default=LENSES / "smollm2-tuned")
    parser.add_argument("--jlens", type=Path, default=LENSES / "smollm2-jlens")
    parser.add_argument("--sequences", type=int, default=8, help="calibration and test sequences")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--max-remove", type=int, default=8)
    parser.add_argument("--oracle", choices=("static", "greedy"), default="static")
    parser.add_argument("--heal-steps", type=int, default=50)
    parser.add_argument("--lens-positions", type=int, default=64, help="per calibration sequence")
    parser.add_argument("--quick", action="store_true", help="smoke test: no J-lens, 5 heal steps")
    parser.add_argument("--work", type=Path, default=Path("/tmp/uses_prune"))
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the summary goes")
    parser.add_argument(
        "--tabulate-only", action="store_true", help="Redo the markdown and figures from the JSON."
    )
    return parser.parse_args()


def lenses_for(model, args) -> tuple[dict, dict]:
    """The lenses that exist, and why any asked-for lens is missing (said in the results)."""
    from tunedlens import LensFileError, load_lens
    from tunedlens.lenses.io.load import resolve_location

    found, missing = {}, {}
    for name, path in (("tuned", args.tuned), ("jlens", args.jlens)):
        if args.quick and name == "jlens":
            missing[name] = "skipped (--quick)"
            continue
        try:
            location = resolve_location(str(path))
        except LensFileError as error:
            missing[name] = str(error)
            continue
        found[name] = load_lens(location, model)
    for name, why in missing.items():
        print(f"!! lens {name}: {why}")
    return found, missing


def main() -> None:
    args = parse()
    if args.tabulate_only:
        return tabulate(args)
    from tunedlens import load_model
    from tunedlens.analyze import prune
    from tunedlens.analyze.pruning import HealConfig
    from tunedlens.data import pack_blocks

    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, tokenizer = load_model(args.model)
    n = args.sequences

    def tokens(split: str):
        source = first_documents(split, 400, args.work)
        return pack_blocks(str(source), tokenizer, seq_len=args.seq_len, n_sequences=n).tokens

    calibration, test = tokens("validation"), tokens("test")
    lenses, missing = lenses_for(model, args)
    heal = ["gromov", "block_influence", "oracle"]
    config = HealConfig(steps=5 if args.quick else args.heal_steps)
    report = prune(
        model,
        calibration,
        test_ids=test,
        lenses=lenses,
        max_remove=args.max_remove,
        oracle=args.oracle,
        heal=heal,
        heal_config=config,
        batch_size=4,
        lens_positions=args.lens_positions,
        progress=lambda stage: print(
            f"[{time.perf_counter() - started:7.1f} s] {stage}", flush=True
        ),
        model_name="SmolLM2-135M-Instruct (demo)" if args.model == "demo" else args.model,
    )
    written = report.save(args.work / "report")
    data = report.to_dict()
    elapsed = time.perf_counter() - started
    args.results.mkdir(parents=True, exist_ok=True)
    payload = {
        **data,
        "missing_lenses": missing,
        "benchmark": {
            "wall_s": elapsed,
            "peak_rss_mib": peak_rss_mib(),
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
        },
    }
    (args.results / "uses_prune.json").write_text(dumps(payload, indent=2) + "\n")
    shutil.copy(args.work / "report" / "prune_curves.png", args.results / "uses_prune.png")
    shutil.copy(args.work / "report" / "prune_angular.png", args.results / "uses_prune_angular.png")
    write_markdown(args.results, data, missing, elapsed, vars(args))
    print("\n".join(str(path) for path in written))


def tabulate(args) -> None:
    """The markdown and figures again, from ``uses_prune.json`` (after a change of layout)."""
    from tunedlens.analyze import PruneReport
    from tunedlens.plot.prune_figures import save_prune_figures

    payload = json.loads((args.results / "uses_prune.json").read_text())
    data = {k: v for k, v in payload.items() if k not in ("missing_lenses", "benchmark")}
    figures = args.work / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    save_prune_figures(data, figures)
    shutil.copy(figures / "prune_curves.png", args.results / "uses_prune.png")
    shutil.copy(figures / "prune_angular.png", args.results / "uses_prune_angular.png")
    benchmark = payload["benchmark"]
    write_markdown(
        args.results,
        PruneReport(data).to_dict(),
        payload["missing_lenses"],
        benchmark["wall_s"],
        benchmark["args"],
    )


HAND = "<!-- written by hand: kept when the script rewrites this file -->"


def write_markdown(results: Path, data: dict, missing: dict, elapsed: float, args: dict) -> None:
    """``uses_prune.md``: the computed tables, then the hand-written reading, if any, kept."""
    from tunedlens.analyze import PruneReport

    path = results / "uses_prune.md"
    kept = path.read_text().split(HAND, 1) if path.exists() else []
    text = markdown(data, missing, elapsed, args, PruneReport(data).summary())
    if len(kept) == 2:
        text += "\n" + HAND + kept[1]
    path.write_text(text)
    print(text)


def best_scores(data: dict) -> list[tuple[str, float]]:
    rho = [
        (name, v["delta_ce"]) for name, v in data["spearman"].items() if v["delta_ce"] is not None
    ]
    return sorted(rho, key=lambda item: -item[1])


def verdict(data: dict) -> str:
    """Computed sentences: which score ranks blocks best, and which removal is best at K."""
    k_max = data["max_remove"]
    ranked = best_scores(data)
    ends = {name: curve[k_max]["ce_bits"] for name, curve in data["curves"].items()}
    order = sorted(ends, key=ends.get)
    oracle = ends["oracle"]
    scores_only = [name for name in order if name in data["scores"]]
    lines = [
        f"- Ranking single blocks: the best cheap score is **{ranked[0][0]}** "
        f"(Spearman ρ = {ranked[0][1]:.2f} with the measured Δ cross-entropy), then "
        + ", ".join(f"{name} ({rho:.2f})" for name, rho in ranked[1:])
        + ".",
        f"- Removing {k_max} blocks: the best method is **{order[0]}** ({ends[order[0]]:.3f} bits "
        f"against {data['baseline']['ce_bits']:.3f} for the full model); the static oracle reaches "
        f"{oracle:.3f}; the best score-greedy method is {scores_only[0]} ({ends[scores_only[0]]:.3f}), "
        f"Gromov's run {ends['gromov']:.3f}.",
    ]
    for name, heal in data["heal"].items():
        recovered = heal["recovered"]
        lines.append(
            f"- Heal of {name} at k = {k_max}: {heal['before']['ce_bits']:.3f} → "
            f"{heal['after']['ce_bits']:.3f} bits"
            + ("" if recovered is None else f" ({100 * recovered:.0f} % of the loss recovered)")
            + "."
        )
    return "\n".join(lines)


def markdown(data: dict, missing: dict, elapsed: float, args: dict, summary: str) -> str:
    lenses = ", ".join(f"{name} ({entry['source']})" for name, entry in data["lenses"].items())
    header = [
        "# Which blocks can go: SmolLM2-135M (issue #24)",
        "",
        f"`nice -n 10 python benchmarks/uses_prune.py --sequences {args['sequences']} --seq-len "
        f"{args['seq_len']} --max-remove {args['max_remove']} --oracle {args['oracle']} "
        f"--heal-steps {args['heal_steps']} --lens-positions {args['lens_positions']}`: calibration = "
        "corpus/validation, test = corpus/test (disjoint). "
        f"Lenses: {lenses}." + (f" Missing: {json.dumps(missing)}." if missing else ""),
        "",
        f"Wall time {elapsed / 60:.1f} min on a 2-core CPU shared with other jobs (not a speed "
        "measurement).",
        "",
        "![cross-entropy against blocks removed](uses_prune.png)",
        "",
        "![angular distance](uses_prune_angular.png)",
        "",
        "## Computed verdicts",
        "",
        verdict(data),
        "",
    ]
    body = summary.split("\n", 1)[1]  # drop the report's own title
    return "\n".join(header) + body


if __name__ == "__main__":
    main()
