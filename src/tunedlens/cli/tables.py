"""Terminal tables (rich) of what commands return: the CLI's presentation, kept out of the library."""

from __future__ import annotations


def info_tables(info: dict) -> list:
    """``tunedlens lens info`` as rich tables: a summary, then the per-row update sizes."""
    import json

    from rich.table import Table

    summary = Table(show_header=False, title=f"lens {info['path']}")
    for key, value in info.items():
        if key != "rows":
            summary.add_row(
                key, json.dumps(value, default=str) if isinstance(value, dict) else str(value)
            )
    what = "‖J − I‖ (Frobenius)" if info.get("kind") == "jacobian" else "the learned update"
    rows = Table(title=f"size per row (Frobenius norm of {what})")
    for column in ("row", "update_norm", "bias_norm"):
        rows.add_column(column, justify="right")
    for row in info["rows"]:
        rows.add_row(row["label"], f"{row['update_norm']:.4g}", f"{row['bias_norm']:.4g}")
    return [summary, rows]


def predict_table(run):
    """``tunedlens predict`` as a rich table: one row per lens row, one column per rank."""
    import json

    from rich.table import Table

    name = f"{run.kind} lens" + ("" if run.lens == run.kind else f" {run.lens}")
    table = Table(title=f"{name} · {run.model} · position {run.position}")
    table.add_column("row", justify="right")
    for rank in range(1, len(run.rows[0].top) + 1):
        table.add_column(f"#{rank}")
    for row in run.rows:
        cells = [f"{json.dumps(t.token, ensure_ascii=False)} {t.prob:.2f}" for t in row.top]
        table.add_row(row.label, *cells, style="bold" if row.label == "output" else None)
    return table


def lens_list_table(rows: list[dict], model: str | None):
    """``tunedlens lens list`` as a rich table."""
    from rich.table import Table

    table = Table(title=f"lenses for {model}" if model else "known lenses")
    for column in ("model", "kind", "--lens location", "source"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["model"], row["kind"], row["location"], row["source"])
    return table
