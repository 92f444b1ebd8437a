"""Write an evaluation: ``metrics.json``, CSV sidecars, ``summary.md`` and figures."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from tunedlens.arch.points import blocks_of, row_label
from tunedlens.outputs import OutputKind
from tunedlens.plot.eval_figures import FIGURES
from tunedlens.plot.html import BUNDLE_PATTERN, DEFAULT_PLOTLY
from tunedlens.serialize import dumps

REPORT_OUTPUT = OutputKind(
    "an evaluation report",
    (
        "metrics.json",
        "summary.md",
        "records.csv",
        "pure-next-token.csv",
        *(f"{stem}.{suffix}" for stem in FIGURES for suffix in ("html", "png")),
        BUNDLE_PATTERN,
    ),
)
"""Every file :func:`save_report` may write: what ``eval --force`` may replace."""
RECORD_COLUMNS = [
    "prompt_id",
    "lens",
    "layer",
    "position",
    "token",
    "top1_token",
    "top1_prob",
    "answer_rank",
    "answer_prob",
    "kl_bits",
    "entropy_bits",
]
NEXT_TOKEN_COLUMNS = [
    "prompt_id",
    "category",
    "lens",
    "layer",
    "answer",
    "top1_token",
    "top1_prob",
    "answer_rank",
    "answer_prob",
    "kl_bits",
    "entropy_bits",
    "cos_to_final",
    "copy_collapse",
]


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def row_labels(metrics: dict) -> list[str]:
    """How the rows of a ``metrics.json`` are shown (``"3"``, ``"3.mid"``, ``"output"``).

    Reports written before rows had labels (and before ``n_blocks``) are labelled from their
    ``output_row``.
    """
    if "row_labels" in metrics:
        return list(metrics["row_labels"])
    points = metrics.get("points", "block")
    n_blocks = blocks_of(points, metrics["output_row"])
    return [row_label(points, row, n_blocks) for row in metrics["layers"]]


def summary_markdown(metrics: dict) -> str:
    """A readable table (rows x lenses: KL, CE, top-1) and the gates."""
    names = list(metrics["lenses"])
    lines = [
        f"# Lens evaluation: {metrics['model']}",
        "",
        f"{metrics['tokens']:,} tokens ({metrics['sequences']} x {metrics['seq_len']}). "
        f"Row {metrics['output_row']} is the output row (the model's own logits). "
        f"Model: cross-entropy {metrics['baseline']['ce_bits']:.3f} bits/token, "
        f"entropy {metrics['baseline']['entropy_bits']:.3f} bits.",
        "",
        "KL(model ‖ lens) in bits, then cross-entropy to the next token in bits, then top-1 "
        "agreement with the model.",
        "",
        "| row | "
        + " | ".join(f"KL {n}" for n in names)
        + " | "
        + " | ".join(f"CE {n}" for n in names)
        + " | "
        + " | ".join(f"top-1 {n}" for n in names)
        + " |",
        "| ---: |" + " ---: |" * (3 * len(names)),
    ]
    for index, label in enumerate(row_labels(metrics)):
        cells = [f"{metrics['lenses'][n]['kl_bits'][index]:.3f}" for n in names]
        cells += [f"{metrics['lenses'][n]['ce_bits'][index]:.3f}" for n in names]
        cells += [f"{metrics['lenses'][n]['top1_agree'][index]:.3f}" for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    means = [
        sum(metrics["lenses"][n]["kl_bits"][:-1]) / max(1, len(metrics["layers"]) - 1)
        for n in names
    ]
    lines += [
        "",
        "Mean KL over the rows before the output row: "
        + ", ".join(f"{n} {m:.3f} bits" for n, m in zip(names, means, strict=True)),
    ]
    prompts = metrics.get("prompts")
    if prompts:
        lines += [
            "",
            f"## Prompt suite ({prompts['used']} of {prompts['total']} prompts used; "
            f"{prompts['skipped_count']} skipped, reasons in metrics.json)",
        ]
    for warning in metrics.get("warnings", []):
        lines += ["", f"**Warning: {warning}.**"]
    for name, gates in metrics.get("gates", {}).items():
        lines += ["", f"### Gates for `{name}` against the logit lens", ""]
        lines += ["| gate | result | measured (threshold) |", "| --- | --- | --- |"]
        for gate, result in gates.items():
            verdict = "pass" if result["pass"] else "FAIL"
            lines.append(f"| {gate} | {verdict} | {gate_numbers(gate, result)} |")
    return "\n".join(lines) + "\n"


def gate_numbers(gate: str, result: dict) -> str:
    """A gate's measured values beside its thresholds, in one short line."""
    if gate == "A":
        delta = {str(k): v for k, v in result["delta_kl_bits"].items()}
        need = {str(k): v for k, v in result["thresholds"].items()}
        return (
            "ΔKL at 25/50/75 % depth "
            + ", ".join(f"{_short(delta[k])} (≥ {_short(need[k])})" for k in delta)
            + " bits"
        )
    if gate == "B":
        share = result["required_share"]
        return (
            f"answer earlier: rank≤10 by ≥4 rows {_short(result['share_rank_le_10_shift_ge_4'])}, "
            f"rank≤5 by ≥2 rows {_short(result['share_rank_le_5_shift_ge_2'])} (≥ {share})"
        )
    if gate == "C":
        return (
            f"output row vs the model's forward logits after a temperature: KL "
            f"{_short(result['kl_after_temp_bits'])} bits (≤ {result['threshold']})"
        )
    if gate == "D":
        return (
            f"worst ΔKL at 25/50/75 % depth {_short(result['worst_delta_kl_bits'])} bits "
            f"(≥ {result['threshold']})"
        )
    if gate == "E":
        worse = sorted(
            set(result["rows_worse_top1"]) | set(result["rows_worse_kl"]),
            key=lambda label: (not label.split(".")[0].isdigit(), label),
        )
        return (
            f"rows worse than the logit lens: {', '.join(worse) or 'none'} (none allowed; "
            f"largest top-1 drop {_short(result['largest_top1_drop'])} at row {result['at_row']})"
        )
    return ", ".join(f"{k}={_short(v)}" for k, v in result.items() if k != "pass")


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    return str(value)


def save_report(
    report, out: str | os.PathLike, *, plots: bool = True, plotly: str = DEFAULT_PLOTLY
) -> list[Path]:
    """Write every output file of ``report`` into the directory ``out``; returns their paths.

    ``plotly``: how the HTML figures get plotly.js (see :mod:`tunedlens.plot.html`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json", out / "summary.md"]
    written[0].write_text(dumps(report.metrics, indent=2) + "\n")
    written[1].write_text(summary_markdown(report.metrics))
    if report.records or report.next_token:
        _write_csv(out / "records.csv", RECORD_COLUMNS, report.records)
        _write_csv(out / "pure-next-token.csv", NEXT_TOKEN_COLUMNS, report.next_token)
        written += [out / "records.csv", out / "pure-next-token.csv"]
    if plots:
        from tunedlens.plot.eval_figures import save_eval_figures

        written += save_eval_figures(report.metrics, out, plotly=plotly)
    return written
