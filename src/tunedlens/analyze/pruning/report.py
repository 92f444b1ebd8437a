"""Write a pruning report: ``prune.json``, ``prune_summary.md``, CSV sidecars and figures."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from tunedlens.serialize import dumps

CURVE_COLUMNS = [
    "method",
    "k",
    "removed",
    "ce_bits",
    "delta_ce_bits",
    "kl_bits",
    "top1_agree",
    "generation_match",
]


def _number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _oracle(data: dict) -> str:
    if data["settings"]["oracle"] == "greedy":
        return "re-measured after each removal, chosen on the test ids: an optimistic baseline"
    return "ranked once, chosen on the test ids: an optimistic baseline"


def _percent(value) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def _blocks(removed) -> str:
    return ", ".join(str(b) for b in removed) or "none"


def summary_markdown(data: dict) -> str:
    """Ranked tables: methods at ``k = K``, scores by Spearman, blocks by measured Δ, healing."""
    k_max, calibration, test = data["max_remove"], data["calibration"], data["test"]
    lines = [
        f"# Which blocks can go: {data['model']}",
        "",
        f"{data['n_blocks']} blocks. Scores from {calibration['tokens']:,} calibration tokens "
        f"({calibration['sequences']} x {calibration['seq_len']}); every effect measured on "
        f"{test['tokens']:,} test tokens ({test['sequences']} x {test['seq_len']}). The full model's "
        f"cross-entropy on them: {data['baseline']['ce_bits']:.3f} bits/token.",
        "",
        "CE: cross-entropy to the next token (bits/token); KL: KL(full model ‖ pruned) in bits; "
        "top-1: agreement with the full model's top token; generation: share of the full model's "
        "greedy continuation reproduced before the first difference.",
        "",
        "Methods, all at equal compute (with k blocks removed, L − k blocks run): a score's name "
        "removes the k blocks with the lowest score; `oracle` the k with the lowest measured "
        f"single-block ΔCE ({_oracle(data)}); `gromov` the run of k blocks of least angular "
        "distance at the last token; `truncate/<lens>` drops the last k blocks and reads the "
        "lens at row L − k (a tuned lens adds one d × d product).",
        "",
        f"## Methods with {k_max} of {data['n_blocks']} blocks removed, best first",
        "",
        "| rank | method | removed blocks | CE | ΔCE | KL | top-1 | generation |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    ends = sorted(
        ((name, curve[k_max]) for name, curve in data["curves"].items()),
        key=lambda item: item[1]["ce_bits"],
    )
    for rank, (name, point) in enumerate(ends, 1):
        lines.append(
            f"| {rank} | {name} | {_blocks(point['removed'])} | {point['ce_bits']:.3f} | "
            f"{point['delta_ce_bits']:+.3f} | {point['kl_bits']:.3f} | {point['top1_agree']:.3f} | "
            f"{_number(point.get('generation_match'), 2)} |"
        )
    lines += [
        "",
        "## How well each cheap score ranks the blocks like the measured truth",
        "",
        "Spearman correlation over the blocks between the score (calibration ids) and the "
        "measured effect of removing that block alone (test ids).",
        "",
        "| score | ρ with ΔCE | ρ with KL |",
        "| --- | ---: | ---: |",
    ]
    ranked = sorted(data["spearman"].items(), key=lambda item: -(item[1]["delta_ce"] or -2.0))
    for name, rho in ranked:
        lines.append(f"| {name} | {_number(rho['delta_ce'])} | {_number(rho['kl'])} |")
    scores = list(data["scores"])
    lines += [
        "",
        "## Blocks, the most removable first (measured ΔCE with that block alone removed)",
        "",
        "| block | ΔCE | KL | top-1 | " + " | ".join(scores) + " |",
        "| ---: | ---: | ---: | ---: |" + " ---: |" * len(scores),
    ]
    order = sorted(range(data["n_blocks"]), key=lambda b: data["measured"][b]["delta_ce_bits"])
    for block in order:
        m = data["measured"][block]
        cells = [_number(data["scores"][name][block], 4) for name in scores]
        lines.append(
            f"| {block} | {m['delta_ce_bits']:+.3f} | {m['kl_bits']:.3f} | "
            f"{m['top1_agree']:.3f} | " + " | ".join(cells) + " |"
        )
    if data["heal"]:
        lines += [
            "",
            f"## Healing at k = {k_max}: an affine map before the head, fitted on calibration ids",
            "",
            "Least squares (ridge chosen on a held-out fifth of the calibration sequences), then AdamW "
            "steps on KL, kept while the held-out KL falls; no map when nothing beats the "
            "identity there. Recovered: the share of the cross-entropy (and of the KL to the full "
            "model) that the removal lost and the heal wins back, on the test ids.",
            "",
            "| method | removed blocks | CE before | CE healed | CE recovered | KL before | KL healed "
            "| KL recovered | generation |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, heal in data["heal"].items():
            before, after = heal["before"], heal["after"]
            lines.append(
                f"| {name} | {_blocks(heal['removed'])} | {before['ce_bits']:.3f} | "
                f"{after['ce_bits']:.3f} | {_percent(heal['recovered'])} | {before['kl_bits']:.3f} | "
                f"{after['kl_bits']:.3f} | {_percent(heal['recovered_kl'])} | "
                f"{_number(after.get('generation_match'), 2)} |"
            )
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _tables(data: dict) -> dict[str, tuple[list[str], list[dict]]]:
    """CSV name -> (columns, rows)."""
    scores = list(data["scores"])
    blocks = [
        {
            "block": b,
            "delta_ce_bits": m["delta_ce_bits"],
            "kl_bits": m["kl_bits"],
            "top1_agree": m["top1_agree"],
            **{name: data["scores"][name][b] for name in scores},
        }
        for b, m in enumerate(data["measured"])
    ]
    curves = [
        {"method": name, **point, "removed": " ".join(map(str, point["removed"]))}
        for name, curve in data["curves"].items()
        for point in curve
    ]
    angular = [
        {
            "n": n + 1,
            "start": start,
            "last_token": value,
            "all_tokens": data["angular_distance"]["all_tokens"][n][start],
        }
        for n, row in enumerate(data["angular_distance"]["last_token"])
        for start, value in enumerate(row)
        if value is not None
    ]
    return {
        "prune_blocks.csv": (["block", "delta_ce_bits", "kl_bits", "top1_agree", *scores], blocks),
        "prune_curves.csv": (
            [
                c
                for c in CURVE_COLUMNS
                if c != "generation_match" or any("generation_match" in row for row in curves)
            ],
            curves,
        ),
        "prune_angular.csv": (["n", "start", "last_token", "all_tokens"], angular),
    }


def save_prune_report(
    data: dict, out: str | os.PathLike, *, plots: bool = True, plotly: str = "directory"
) -> list[Path]:
    """Write every output file of a pruning report into the directory ``out``; their paths.

    ``plotly``: how the HTML figures get plotly.js (see :mod:`tunedlens.plot.html`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "prune.json", out / "prune_summary.md"]
    written[0].write_text(dumps(data, indent=2) + "\n")
    written[1].write_text(summary_markdown(data))
    for name, (columns, rows) in _tables(data).items():
        _write_csv(out / name, columns, rows)
        written.append(out / name)
    if plots:
        from tunedlens.plot.prune_figures import save_prune_figures

        written += save_prune_figures(data, out, plotly=plotly)
    return written
