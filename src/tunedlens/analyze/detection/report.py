"""What :func:`detect` returns and writes: ``detect.json``, CSV sidecars, ``summary.md``, figures."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from tunedlens.outputs import OutputKind, check_out_dir
from tunedlens.plot.html import BUNDLE_PATTERN, DEFAULT_PLOTLY
from tunedlens.serialize import dumps

DETECT_OUTPUT = OutputKind(
    "an anomaly-detection report",
    (
        "detect.json",
        "summary.md",
        "detect.csv",
        "scores.csv",
        "answers.csv",
        "trajectories_*.png",
        "trajectories_*.html",
        "roc_*.png",
        "roc_*.html",
        BUNDLE_PATTERN,
    ),
)
"""What :meth:`DetectReport.save` writes (what ``force`` may replace)."""

RESULT_COLUMNS = [
    "task",
    "lens",
    "features",
    "detector",
    "auroc",
    "auroc_ci_low",
    "auroc_ci_high",
    "auroc_median",
    "tpr_at_1pct_fpr",
    "threshold",
    "normal_flagged",
    "n_train",
    "n_normal",
    "n_anomalous",
]
CONTROL_COLUMNS = [
    "flagged",
    "auroc_vs_normal",
    "auroc_vs_normal_ci_low",
    "auroc_vs_normal_ci_high",
    "auroc_anomalous_vs_control",
]
SCORE_COLUMNS = ["task", "lens", "features", "detector", "prompt", "item", "kind", "score"]
ANSWER_COLUMNS = [
    "task",
    "prompt",
    "item",
    "kind",
    "split",
    "tokens",
    "label",
    "answer",
    "correct",
    "target",
    "followed",
]


@dataclass(frozen=True)
class DetectReport:
    """What :func:`~tunedlens.analyze.detect` measured; :meth:`to_dict` is ``detect.json``.

    ``results`` has one row per task x lens x feature set x detector (``lens`` is ``None`` for
    the hidden-state baseline): the AUROC of held-out normal against anomalous prompts with its
    bootstrap interval (``auroc_ci95``), the true-positive rate at 1 % false positives
    (``tpr_at_1pct_fpr``, flagging scores above ``threshold``), and per benign control the
    share flagged at that threshold and its AUROC against the normal prompts (0.5: the
    detector cannot tell the control from normal prompts, as it should not).
    """

    settings: dict
    tasks: dict
    """Task name -> attack success, prompt counts and lengths, trajectory summaries."""
    results: list[dict]
    roc: list[dict] = field(default_factory=list)
    """One ROC curve (``fpr``, ``tpr``) per result row."""
    scores: list[dict] = field(default_factory=list)
    """One anomaly score per held-out prompt x lens x feature set x detector."""
    answers: list[dict] = field(default_factory=list)
    """The model's answer to every prompt."""

    @property
    def warnings(self) -> list[str]:
        """Prominent caveats: attacks that did not change the model's answers."""
        return [t["attack"]["warning"] for t in self.tasks.values() if t["attack"]["warning"]]

    def to_dict(self) -> dict:
        """The ``detect.json`` payload (scores and answers go to CSV sidecars)."""
        return {
            "schema": "tunedlens.detect/1",
            "settings": self.settings,
            "warnings": self.warnings,
            "tasks": self.tasks,
            "results": self.results,
            "roc": self.roc,
        }

    def save(
        self,
        out: str | os.PathLike,
        *,
        plots: bool = True,
        force: bool = False,
        plotly: str = DEFAULT_PLOTLY,
    ) -> list[Path]:
        """Write the report into the directory ``out``; returns the paths written.

        ``detect.json``, ``detect.csv`` (one row per result), ``scores.csv``, ``answers.csv``,
        ``summary.md`` and, with ``plots``, the figures (PNG and HTML; ``plotly``: how the
        pages get plotly.js, see :mod:`tunedlens.plot.html`).

        Raises:
            OutputError: ``out`` is a file, or already holds files and ``force`` is False.
        """
        out = check_out_dir(out, DETECT_OUTPUT, force=force)
        out.mkdir(parents=True, exist_ok=True)
        written = [
            out / "detect.json",
            out / "summary.md",
            out / "detect.csv",
            out / "scores.csv",
            out / "answers.csv",
        ]
        written[0].write_text(dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        written[1].write_text(summary_markdown(self), encoding="utf-8")
        controls = list(dict.fromkeys(c for t in self.tasks.values() for c in t["controls"]))
        columns = RESULT_COLUMNS + [f"{c}_{column}" for c in controls for column in CONTROL_COLUMNS]
        _write_csv(written[2], columns, [_flat(row) for row in self.results])
        _write_csv(written[3], SCORE_COLUMNS, self.scores)
        _write_csv(written[4], ANSWER_COLUMNS, self.answers)
        if plots:
            from tunedlens.plot.detect_figures import save_detect_figures

            written += save_detect_figures(self.to_dict(), out, plotly=plotly)
        return written


def _flat(row: dict) -> dict:
    low, high = row["auroc_ci95"] or (None, None)
    flat = {key: row[key] for key in RESULT_COLUMNS if key in row}
    flat.update(lens=row["lens"] or "", auroc_ci_low=low, auroc_ci_high=high)
    for name, control in row["controls"].items():
        c_low, c_high = control["auroc_vs_normal_ci95"] or (None, None)
        flat.update(
            {
                f"{name}_flagged": control["flagged"],
                f"{name}_auroc_vs_normal": control["auroc_vs_normal"],
                f"{name}_auroc_vs_normal_ci_low": c_low,
                f"{name}_auroc_vs_normal_ci_high": c_high,
                f"{name}_auroc_anomalous_vs_control": control["auroc_anomalous_vs_control"],
            }
        )
    return flat


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _number(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _share(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def lens_label(row: dict, hidden_row) -> str:
    """How a result row's lens is shown (the hidden states have none)."""
    return row["lens"] if row["lens"] is not None else f"none (row {hidden_row} states)"


def summary_markdown(report: DetectReport) -> str:
    """The attack success and the AUROC table of every task, warnings first."""
    settings = report.settings
    lines = [f"# Anomalous prompts from lens trajectories: {settings['model']}", ""]
    failed = [name for name, task in report.tasks.items() if task["attack"]["warning"]]
    if failed:
        lines += [
            f"> **Warning:** the anomalies of {', '.join(f'`{n}`' for n in failed)} barely change the "
            "model's answers: the attack failed there, and a detector that flags those prompts "
            "detects their form (length, separators), not a working attack. See each task below.",
            "",
        ]
    lines += [
        f"Detectors fitted on normal prompts only ({settings['train_fraction']:.0%} of them); AUROC "
        "of the held-out normal against the anomalous prompts (0.5 = chance; values below 0.5 are "
        f"reported as they are), 95 % interval from {settings['bootstrap_resamples']} stratified "
        f"bootstrap resamples (seed {settings['seed']}). TPR and the controls' flagged share are "
        "taken at the threshold that flags at most 1 % of the held-out normal prompts (with fewer "
        "than 100 of them: none). For each benign control, 'vs normal' is its AUROC against the "
        "normal prompts (0.5: the detector leaves it alone, as it should) and 'anomalous vs' the "
        "AUROC of the anomalous prompts against it (1: every anomalous prompt scores above every "
        "control, so the detector sees more than the change of form).",
        "",
    ]
    for name, task in report.tasks.items():
        lines += _task_section(report, name, task)
    return "\n".join(lines) + "\n"


def _task_section(report: DetectReport, name: str, task: dict) -> list[str]:
    attack, counts = task["attack"], task["counts"]
    accuracy = ", ".join(
        f"{kind} {_share(value)} ({counts[kind]['test']})"
        for kind, value in attack["accuracy"].items()
    )
    lines = [f"## Task `{name}`: {task['description']}", ""]
    if attack["warning"]:
        lines += [f"> **Warning:** {attack['warning']}", ""]
    lines += [
        f"Attack success: accuracy on held-out prompts: {accuracy}; answers changed by the "
        f"anomaly: {_share(attack['answers_changed'])}; the injected answer given: "
        f"{_share(attack['followed_injection'])}.",
        "",
        "Mean length in tokens: "
        + ", ".join(f"{k} {v:.1f}" for k, v in task["mean_tokens"].items())
        + ".",
        "",
    ]
    controls = task["controls"]
    header = "| lens | features | detector | AUROC [95 % CI] | TPR @ 1 % FPR |"
    header += "".join(f" {c} flagged | {c} vs normal | anomalous vs {c} |" for c in controls)
    lines += [header, "| --- | --- | --- | ---: | ---: |" + " ---: | ---: | ---: |" * len(controls)]
    for row in (r for r in report.results if r["task"] == name):
        interval = row["auroc_ci95"]
        auroc = _number(row["auroc"]) + (
            f" [{_number(interval[0])}, {_number(interval[1])}]" if interval else ""
        )
        cells = [
            lens_label(row, report.settings["hidden_row"]),
            row["features"],
            row["detector"],
            auroc,
            _share(row["tpr_at_1pct_fpr"]),
        ]
        for control in controls:
            entry = row["controls"][control]
            cells += [
                _share(entry["flagged"]),
                _number(entry["auroc_vs_normal"]),
                _number(entry["auroc_anomalous_vs_control"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]
