"""Write an early-exit report: ``early_exit.json``, ``early_exit.md``, CSV sidecars and figures."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from tunedlens.outputs import OutputKind, check_out_dir
from tunedlens.serialize import dumps

EARLY_EXIT_OUTPUT = OutputKind(
    "an early-exit report",
    (
        "early_exit.json",
        "early_exit.md",
        "early_exit_*.csv",
        "early_exit_*.png",
        "early_exit_*.html",
    ),
)
"""What an early-exit report writes into its directory (what ``--force`` may replace)."""

OUTCOME = ["rows_used", "exited", "macs", "saved", "agreement", "kl_bits", "delta_ce_bits"]


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def sweep_rows(metrics: dict) -> list[dict]:
    """One row per lens x measure x threshold."""
    rows = []
    for name, entry in metrics["lenses"].items():
        for measure, sweep in entry["measures"].items():
            for index, threshold in enumerate(sweep["thresholds"]):
                rows.append(
                    {
                        "lens": name,
                        "measure": measure,
                        "threshold": threshold,
                        **{key: sweep[key][index] for key in OUTCOME},
                    }
                )
    return rows


def calibration_rows(metrics: dict) -> list[dict]:
    """One row per lens x measure x δ."""
    rows = []
    for name, measures in metrics["calibration"]["results"].items():
        for measure, by_delta in measures.items():
            for delta, result in by_delta.items():
                test = result.get("test", {})
                rows.append(
                    {
                        "lens": name,
                        "measure": measure,
                        "delta": delta,
                        "certified": result["certified"],
                        "threshold": result.get("threshold"),
                        "upper_bound": result["upper_bound"],
                        "calibration_agreement": result.get("calibration_agreement"),
                        "calibration_saved": result.get("calibration_saved"),
                        **{f"test_{key}": test.get(key) for key in OUTCOME},
                        "test_holds": result.get("test_holds"),
                    }
                )
    return rows


def summary_markdown(metrics: dict) -> str:
    """The oracle, the certified thresholds on the test tokens, and generation, per lens."""
    compute = metrics["compute"]
    block = compute["blocks"][0]["fixed_macs"]
    calibration = metrics["calibration"]
    lines = [
        f"# Early exit: {metrics['model']}",
        "",
        f"{metrics['tokens']:,} tokens ({metrics['sequences']} x {metrics['seq_len']}, every position "
        f"with a next token), teacher-forced. Checks at rows {_rows(metrics['check_rows'])} of "
        f"{metrics['n_blocks']} blocks. The full model costs {compute['full_macs_per_token'] / 1e6:.2f} M "
        f"MACs per token; its head {compute['head_macs'] / 1e6:.2f} M (= {compute['head_macs'] / block:.1f} "
        "blocks' projections and MLP), which every decoding check pays again. Saved compute is net "
        "of every check and of the K/V propagation of skipped blocks; agreement is with the model's "
        "top-1; KL(model ‖ exit) and Δ cross-entropy (to the next token, vs the model) in bits.",
        "",
        f"Certified thresholds: agreement ≥ 1 − δ with confidence {1 - calibration['epsilon']:.2f} "
        f"({calibration['bound']} bound) on {calibration['calibration_tokens']:,} calibration tokens "
        f"({calibration['split']}), measured on {calibration['test_tokens']:,} test tokens (✗: the "
        "test agreement fell below 1 − δ). A certified threshold that exits no token means no "
        "threshold of that measure kept agreement; negative savings mean the checks cost more than "
        "the exits save.",
    ]
    for name, entry in metrics["lenses"].items():
        oracle, scheduled = entry["oracle"], entry["oracle_on_schedule"]
        lines += [
            "",
            f"## {name} ({entry['kind']})",
            "",
            f"Oracle (prediction depth): {oracle['rows_used']:.2f} rows of {metrics['n_blocks']}, saves "
            f"{oracle['saved']:.1%}; exiting only at check rows {scheduled['rows_used']:.2f} rows, "
            f"saves {scheduled['saved']:.1%} (no check costs: the upper bound). Its top-1 is the "
            f"model's by definition; its distribution is not: KL {oracle['kl_bits']:.2f} bits, "
            f"ΔCE {oracle['delta_ce_bits']:+.2f} bits.",
            "",
            "| measure | δ | threshold | test agreement | test saved | rows used | exited | KL (bits) | ΔCE (bits) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for measure, by_delta in calibration["results"][name].items():
            for delta, result in by_delta.items():
                if not result["certified"]:
                    lines.append(f"| {measure} | {delta} | none certified | | | | | | |")
                    continue
                test = result["test"]
                mark = "" if result["test_holds"] else " ✗"
                lines.append(
                    f"| {measure} | {delta} | {result['threshold']:.6g} | {test['agreement']:.3f}{mark} | "
                    f"{test['saved']:.1%} | {test['rows_used']:.2f} | {test['exited']:.1%} | {test['kl_bits']:.3f} | "
                    f"{test['delta_ce_bits']:+.3f} |"
                )
    generation = metrics.get("generation")
    if generation:
        full = generation["full"]
        lines += [
            "",
            f"## Greedy generation ({len(generation['prompts'])} prompts x {generation['new_tokens']} "
            f"tokens, thresholds certified for δ = {generation['delta']:g})",
            "",
            f"Full model: {full['tokens_per_s']:.1f} tokens/s (its own generate), "
            f"{full['driver_tokens_per_s']:.1f} tokens/s through the exit driver with no exit "
            f"(identical output: {full['driver_identical']:.0%}). {generation['timing']}; "
            f"{generation['device']}, {generation['threads']} threads.",
            "",
            "| lens | measure | threshold | identical | rows used | counted saved | tokens/s | speed-up |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for run in generation["runs"]:
            if run.get("threshold") is None:
                continue
            lines.append(
                f"| {run['lens']} | {run['measure']} | {run['threshold']:.6g} | {run['identical']:.0%} | "
                f"{run['rows_used']:.2f} | {run['saved']:.1%} | {run['tokens_per_s']:.1f} | "
                f"{run['speedup']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def summary_text(metrics: dict) -> str:
    """The oracle and the certified thresholds per lens as plain text, within 80 columns.

    The certified thresholds shown are those of the largest δ; ``early_exit.md`` has every δ.
    """
    calibration = metrics["calibration"]
    delta = f"{max(calibration['deltas']):g}"
    n = metrics["n_blocks"]
    lines = [
        f"Early exit on {metrics['model']}",
        f"{metrics['tokens']:,} tokens; checks at rows {_rows(metrics['check_rows'])} of {n}; "
        f"the full model {_macs(metrics['compute']['full_macs_per_token'])} MACs/token.",
        "Saved: net of every check and of the K/V propagation of skipped blocks.",
        "",
        "Oracle (each token exits at its prediction depth; no checks paid):",
        f"  {'lens':<24} {'rows used':>10} {'saved':>8}",
    ]
    for name, entry in metrics["lenses"].items():
        oracle = entry["oracle"]
        lines.append(f"  {_cut(name, 24):<24} {oracle['rows_used']:>10.2f} {oracle['saved']:>8.1%}")
    lines += [
        "",
        f"Certified: agreement >= 1 - {delta} with confidence {1 - calibration['epsilon']:.2f} "
        f"({calibration['bound']} bound) on",
        f"the calibration tokens; measured on the test tokens (✗: below 1 - {delta} there):",
        f"  {'lens':<16} {'measure':<10} {'threshold':>10} {'agree':>6} {'saved':>9} {'rows':>6}",
    ]
    for name, measures in calibration["results"].items():
        for measure, by_delta in measures.items():
            result = by_delta[delta]
            head = f"  {_cut(name, 16):<16} {measure:<10}"
            if not result["certified"]:
                lines.append(f"{head} {'none':>10}")
                continue
            test = result["test"]
            mark = "" if result["test_holds"] else " ✗"
            lines.append(
                f"{head} {result['threshold']:>10.4g} {test['agreement']:>6.3f} "
                f"{test['saved']:>+9.1%} {test['rows_used']:>6.2f}{mark}"
            )
    generation = metrics.get("generation")
    if generation:
        full = generation["full"]
        lines += [
            "",
            f"Greedy generation, {len(generation['prompts'])} prompts x "
            f"{generation['new_tokens']} tokens (full model {full['tokens_per_s']:.1f} tokens/s):",
            f"  {'lens':<16} {'measure':<10} {'identical':>9} {'tokens/s':>9} {'speed-up':>9}",
        ]
        for run in generation["runs"]:
            if run.get("threshold") is None:
                continue
            lines.append(
                f"  {_cut(run['lens'], 16):<16} {run['measure']:<10} {run['identical']:>9.0%} "
                f"{run['tokens_per_s']:>9.1f} {run['speedup']:>8.2f}x"
            )
    return "\n".join(lines)


def _macs(value: float) -> str:
    return f"{value / 1e6:.1f} M" if value >= 1e5 else f"{value:,.0f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _rows(rows: list[int]) -> str:
    if len(rows) > 2 and rows == list(range(rows[0], rows[-1] + 1, rows[1] - rows[0])):
        step = rows[1] - rows[0]
        return f"{rows[0]}..{rows[-1]}" + (f" (every {step})" if step > 1 else "")
    return ", ".join(map(str, rows))


def save_early_exit(
    metrics: dict, out: str | os.PathLike, *, plots: bool = True, force: bool = False
) -> list[Path]:
    """Write every output file of an early-exit report into the directory ``out``.

    Raises:
        OutputError: ``out`` is a file, or already holds files and ``force`` is False (with
            ``force``, only files an early-exit report writes may be there).
    """
    out = check_out_dir(out, EARLY_EXIT_OUTPUT, force=force)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "early_exit.json", out / "early_exit.md"]
    written[0].write_text(dumps(metrics, indent=2) + "\n")
    written[1].write_text(summary_markdown(metrics))
    written.append(
        _write_csv(
            out / "early_exit_sweep.csv",
            ["lens", "measure", "threshold", *OUTCOME],
            sweep_rows(metrics),
        )
    )
    oracle = [
        {"lens": name, "oracle": kind, **{key: entry[kind][key] for key in OUTCOME}}
        for name, entry in metrics["lenses"].items()
        for kind in ("oracle", "oracle_on_schedule")
    ]
    written.append(_write_csv(out / "early_exit_oracle.csv", ["lens", "oracle", *OUTCOME], oracle))
    columns = [
        "lens",
        "measure",
        "delta",
        "certified",
        "threshold",
        "upper_bound",
        "calibration_agreement",
        "calibration_saved",
        *(f"test_{key}" for key in OUTCOME),
        "test_holds",
    ]
    written.append(
        _write_csv(out / "early_exit_calibration.csv", columns, calibration_rows(metrics))
    )
    histogram = [
        {"lens": name, "exit": which, "row": row, "tokens": count}
        for name, by_rule in metrics["histograms"]["lenses"].items()
        for which, counts in by_rule.items()
        for row, count in enumerate(counts)
    ]
    written.append(
        _write_csv(out / "early_exit_rows.csv", ["lens", "exit", "row", "tokens"], histogram)
    )
    generation = metrics.get("generation")
    if generation:
        keys = [
            "lens",
            "measure",
            "threshold",
            "identical",
            "rows_used",
            "macs_per_token",
            "saved",
            "tokens_per_s",
            "speedup",
            "propagation",
        ]
        runs = [{key: run.get(key) for key in keys} for run in generation["runs"]]
        written.append(_write_csv(out / "early_exit_generation.csv", keys, runs))
    if plots:
        from tunedlens.plot.early_exit_figures import save_early_exit_figures

        written += save_early_exit_figures(metrics, out)
    return written


__all__ = [
    "EARLY_EXIT_OUTPUT",
    "calibration_rows",
    "save_early_exit",
    "summary_markdown",
    "summary_text",
    "sweep_rows",
]
