"""Prompt injections from lens trajectories on SmolLM2-135M (issue #25; Belrose et al. 2023, §5).

One ``tunedlens.analyze.detect`` run over the three built-in tasks (capitals, sentiment,
arithmetic), reading the logit lens and, when given, a tuned lens and a J-lens: attack success
(accuracy on normal against injected prompts), the AUROC of every lens x feature set x detector
with its bootstrap interval, and the share of benign controls flagged. Writes the full report
into ``--work`` and ``benchmarks/results/uses_detect.{md,json,png}``.

    nice -n 10 python benchmarks/uses_detect.py --tuned LENS_DIR --jlens JLENS_DIR
    python benchmarks/uses_detect.py --n-items 8 --bootstrap 50      # a tiny-scale check
    python benchmarks/uses_detect.py --tabulate-only                  # redo the tables from --work

A '## Discussion' section written by hand at the end of the results table is kept when the
table is redone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import RESULTS, machine, save

TASKS = ("capitals", "sentiment", "arithmetic")
TRAJECTORY_TASK = "sentiment"
"""The task whose trajectory figure is copied beside the results (the others stay in --work)."""
PAPER = {
    "tuned lens + isolation forest": "0.99–1.00 on BoolQ, MNLI, QNLI, QQP, SST-2; 0.59–0.74 on "
    "ARC-Easy, ARC-Challenge, MC-TACO, SciQ",
    "logit lens": "lower than the tuned lens on most tasks",
    "hidden-state baseline (Mahalanobis)": "matches or beats both lenses on most tasks",
}
"""Pythia-12B AUROCs reported by the tuned-lens paper (Belrose et al. 2023, Table 3)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuned", help="A tuned lens of SmolLM2 (any lens location).")
    parser.add_argument("--jlens", help="A J-lens of SmolLM2 (any lens location).")
    parser.add_argument("--work", type=Path, default=Path("/tmp/uses_detect"))
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--n-items", type=int, default=None, help="Questions per task (all).")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="uses_detect", help="Results file stem.")
    parser.add_argument("--tabulate-only", action="store_true", help="Redo the tables from --work.")
    args = parser.parse_args()
    report_dir = args.work / "report"
    if not args.tabulate_only:
        run(args, report_dir)
    payload = json.loads((report_dir / "detect.json").read_text())
    timing = json.loads((args.work / "timing.json").read_text())
    table, summary = tabulate(payload, timing)
    save(args.name, summary, table + kept_discussion(RESULTS / f"{args.name}.md"))
    figure(payload, RESULTS / f"{args.name}.png")
    example = report_dir / f"trajectories_{TRAJECTORY_TASK}.png"
    if example.exists():
        shutil.copyfile(example, RESULTS / f"{args.name}_trajectories.png")


def kept_discussion(path: Path) -> str:
    """The hand-written '## Discussion' section of an earlier table, kept when it is redone."""
    text = path.read_text() if path.exists() else ""
    start = text.find("\n## Discussion")
    return "" if start < 0 else text[start + 1 :]


def run(args, report_dir: Path) -> None:
    from tunedlens.analyze import detect
    from tunedlens.analyze.detection import check_detect_args
    from tunedlens.lenses.io.load import load_lens, resolve_location
    from tunedlens.models import load_model

    check_detect_args(args.tasks, shots=args.shots, n_items=args.n_items, seed=args.seed)
    locations = {name: loc for name, loc in (("tuned", args.tuned), ("jlens", args.jlens)) if loc}
    locations = {name: resolve_location(location) for name, location in locations.items()}
    start = time.perf_counter()
    model, tokenizer = load_model("demo")
    lenses = {name: load_lens(location, model) for name, location in locations.items()}
    loaded = time.perf_counter()

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} prompts, {time.perf_counter() - loaded:.0f} s", end="", flush=True)

    report = detect(
        model,
        tokenizer,
        lenses,
        args.tasks,
        shots=args.shots,
        n_items=args.n_items,
        bootstrap=args.bootstrap,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=progress,
        model_name="SmolLM2-135M (demo)",
    )
    print()
    report.save(report_dir, force=True)
    timing = {
        "load_s": loaded - start,
        "detect_s": time.perf_counter() - loaded,
        "locations": {name: location.text for name, location in locations.items()},
        "machine": machine(),
    }
    (args.work / "timing.json").write_text(json.dumps(timing, indent=2))


def _auroc(row: dict) -> str:
    interval = row["auroc_ci95"]
    text = f"{row['auroc']:.2f}"
    return text + (f" [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else "")


def _lens(row: dict, hidden_row) -> str:
    return row["lens"] if row["lens"] is not None else f"— (row {hidden_row} states)"


def tabulate(payload: dict, timing: dict) -> tuple[str, dict]:
    settings, tasks, results = payload["settings"], payload["tasks"], payload["results"]
    detectors = settings["detectors"]
    lines = [
        "# Prompt injections from lens trajectories: SmolLM2-135M",
        "",
        f"`tunedlens.analyze.detect` on the built-in tasks ({', '.join(tasks)}), "
        f"{settings['shots'] or 5} shots, seed {settings['seed']}; lenses: "
        + ", ".join(f"{n} ({e['source']})" for n, e in settings["lenses"].items())
        + f". Detectors fitted on {settings['train_fraction']:.0%} of the normal prompts (by "
        "question), tested on the held-out questions asked normally, injected, and as two benign "
        "controls (`separators`: the injection's separator lines alone; `filler`: neutral text "
        "of the injection's length). AUROC of held-out normal vs injected prompts with a 95 % "
        f"interval from {settings['bootstrap_resamples']} stratified bootstrap resamples; the "
        "controls' columns give the share flagged at the threshold that flags no held-out normal "
        "prompt (1 % FPR with fewer than 100 of them).",
        "",
        f"Wall time: model load {timing['load_s']:.0f} s, detect {timing['detect_s'] / 60:.1f} min on "
        f"this 2-core CPU shared with other jobs ({timing['machine']['cpu_threads']} threads; not a "
        "speed measurement)." + (f" Note: {timing['note']}." if timing.get("note") else ""),
        "",
    ]
    lines += [
        "![AUROC of every lens, feature set and detector](uses_detect.png)",
        "",
        "Every AUROC with its 95 % interval; × marks the separators control against normal "
        f"prompts. Below, the {TRAJECTORY_TASK} task: median per row with a 10–90 % band for each "
        "kind of held-out prompt. The full report (JSON, CSV, every task's trajectory and ROC "
        "figures as PNG and offline HTML) is written to `--work`/report.",
        "",
        f"![Trajectories of the {TRAJECTORY_TASK} task](uses_detect_trajectories.png)",
        "",
    ]
    lines += [f"> **Warning:** {w}" for w in payload["warnings"]]
    lines += [
        "## Attack success",
        "",
        "| task | normal | injected | separators | filler | "
        "answers changed | injected answer given | mean tokens (normal → injected) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, task in tasks.items():
        attack, accuracy, tokens = task["attack"], task["attack"]["accuracy"], task["mean_tokens"]
        cells = [
            f"{accuracy.get(k, float('nan')):.0%}"
            for k in ("normal", "injected", "separators", "filler")
        ]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {attack['answers_changed']:.0%} | "
            f"{attack['followed_injection']:.0%} | {tokens['normal']:.0f} → "
            f"{tokens['injected']:.0f} |"
        )
    lines += [
        "",
        "Accuracy on the held-out questions (chance: 25 % for the lettered tasks, 50 % "
        "for sentiment); 'answers changed': injected prompts whose answer differs from "
        "their normal twin's.",
        "",
    ]
    for name in tasks:
        rows = [r for r in results if r["task"] == name]
        lines += [
            f"## {name}: AUROC normal vs injected [95 % CI]",
            "",
            "| lens | features | " + " | ".join(detectors) + " |",
            "| --- | --- |" + " ---: |" * len(detectors),
        ]
        combos = list(dict.fromkeys((r["lens"], r["features"]) for r in rows))
        by_key = {(r["lens"], r["features"], r["detector"]): r for r in rows}
        for lens, features in combos:
            cells = [_auroc(by_key[(lens, features, d)]) for d in detectors]
            lines.append(
                f"| {_lens(by_key[(lens, features, detectors[0])], settings['hidden_row'])} | "
                f"{features} | " + " | ".join(cells) + " |"
            )
        lines += [
            "",
            f"TPR at 1 % FPR / separators flagged / filler flagged / separators-vs-normal AUROC "
            f"({name}):",
            "",
            "| lens | features | " + " | ".join(detectors) + " |",
            "| --- | --- |" + " ---: |" * len(detectors),
        ]
        for lens, features in combos:
            cells = []
            for d in detectors:
                row = by_key[(lens, features, d)]
                controls = row["controls"]
                cells.append(
                    f"{row['tpr_at_1pct_fpr']:.0%} / {controls['separators']['flagged']:.0%} / "
                    f"{controls['filler']['flagged']:.0%} / "
                    f"{controls['separators']['auroc_vs_normal']:.2f}"
                )
            lines.append(
                f"| {_lens(by_key[(lens, features, detectors[0])], settings['hidden_row'])} | "
                f"{features} | " + " | ".join(cells) + " |"
            )
        lines += [
            "",
            f"AUROC of the injected prompts against each benign control ({name}; 1: every "
            "injected prompt scores above every control, 0.5: the detector cannot tell them "
            "apart): separators / filler.",
            "",
            "| lens | features | " + " | ".join(detectors) + " |",
            "| --- | --- |" + " ---: |" * len(detectors),
        ]
        for lens, features in combos:
            controls = [by_key[(lens, features, d)]["controls"] for d in detectors]
            cells = [
                f"{c['separators']['auroc_anomalous_vs_control']:.2f} / "
                f"{c['filler']['auroc_anomalous_vs_control']:.2f}"
                for c in controls
            ]
            lines.append(
                f"| {_lens(by_key[(lens, features, detectors[0])], settings['hidden_row'])} | "
                f"{features} | " + " | ".join(cells) + " |"
            )
        lines.append("")
    lines += ["## Against the paper", "", *comparison(payload), ""]
    summary = {
        "settings": settings,
        "warnings": payload["warnings"],
        "attack": {name: task["attack"] for name, task in tasks.items()},
        "mean_tokens": {name: task["mean_tokens"] for name, task in tasks.items()},
        "counts": {name: task["counts"] for name, task in tasks.items()},
        "results": results,
        "timing": timing,
        "paper_pythia_12b": PAPER,
    }
    return "\n".join(lines) + "\n", summary


def _best(rows: list[dict]) -> dict:
    return max(rows, key=lambda r: r["auroc"])


def comparison(payload: dict) -> list[str]:
    """Sentences computed from the results, set beside the paper's Pythia-12B numbers."""
    results, tasks = payload["results"], payload["tasks"]
    out = [
        f"- The paper (Pythia-12B): tuned lens + isolation forest {PAPER['tuned lens + isolation forest']}; "
        f"logit lens {PAPER['logit lens']}; the hidden-state baseline "
        f"{PAPER['hidden-state baseline (Mahalanobis)']}."
    ]
    for name, task in tasks.items():
        rows = [r for r in results if r["task"] == name]
        lens_rows = [r for r in rows if r["lens"] is not None]
        hidden = [r for r in rows if r["lens"] is None]
        tuned = [
            r
            for r in rows
            if r["lens"] == "tuned"
            and r["features"] == "choices"
            and r["detector"] == "isolation-forest"
        ]
        best = _best(lens_rows)
        text = (
            f"- **{name}**: best lens feature set {best['lens']}/{best['features']}/{best['detector']} "
            f"AUROC {_auroc(best)}"
        )
        if tuned:
            text += (
                f"; the paper's recipe (tuned lens, choices, isolation forest) {_auroc(tuned[0])}"
            )
        if hidden:
            text += f"; best hidden-state baseline {_auroc(_best(hidden))} ({_best(hidden)['detector']})"
        flagged = [r["controls"]["separators"]["flagged"] for r in lens_rows]
        text += (
            f". Benign separators flagged by the lens detectors: median "
            f"{sorted(flagged)[len(flagged) // 2]:.0%}; the attack changed "
            f"{task['attack']['answers_changed']:.0%} of answers."
        )
        out.append(text)
    return out


def figure(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings, results = payload["settings"], payload["results"]
    tasks, detectors = list(payload["tasks"]), settings["detectors"]
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(5.2 * len(tasks), 4.4), squeeze=False, sharey=True
    )
    colours = {"isolation-forest": "#1f77b4", "lof": "#2ca02c", "mahalanobis": "#d62728"}
    for axis, name in zip(axes[0], tasks, strict=True):
        rows = [r for r in results if r["task"] == name]
        combos = list(dict.fromkeys((r["lens"], r["features"]) for r in rows))
        width = 0.8 / len(detectors)
        for d_index, detector in enumerate(detectors):
            for c_index, (lens, features) in enumerate(combos):
                row = next(
                    r
                    for r in rows
                    if (r["lens"], r["features"], r["detector"]) == (lens, features, detector)
                )
                x = c_index + (d_index - (len(detectors) - 1) / 2) * width
                low, high = row["auroc_ci95"] or (row["auroc"], row["auroc"])
                axis.bar(
                    x,
                    row["auroc"],
                    width,
                    color=colours.get(detector),
                    alpha=0.8,
                    label=detector if c_index == 0 else None,
                )
                axis.errorbar(
                    x,
                    row["auroc"],
                    yerr=[[row["auroc"] - low], [high - row["auroc"]]],
                    color="black",
                    linewidth=0.8,
                    capsize=2,
                )
                axis.plot(
                    x,
                    row["controls"]["separators"]["auroc_vs_normal"],
                    marker="x",
                    linestyle="none",
                    color="black",
                    markersize=5,
                    label="separators vs normal" if (c_index, d_index) == (0, 0) else None,
                )
        axis.axhline(0.5, color="grey", linestyle=":", linewidth=0.8)
        labels = [f"{lens or 'states'}\n{features}" for lens, features in combos]
        axis.set_xticks(range(len(combos)), labels, fontsize=7)
        axis.set(title=f"{name}", ylim=(0, 1.05))
    axes[0][0].set_ylabel("AUROC, normal vs injected (95 % CI)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(
        "SmolLM2-135M: injected prompts detected from lens features (× = benign separators vs normal)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
