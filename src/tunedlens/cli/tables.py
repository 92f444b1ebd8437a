"""Terminal tables (rich) of what commands return: the CLI's presentation, kept out of the library."""

from __future__ import annotations


def info_tables(info: dict) -> list:
    """``tunedlens lens info`` as rich tables: a summary, then the per-layer update sizes."""
    import json

    from rich.table import Table

    summary = Table(show_header=False, title=f"lens {info['path']}")
    for key, value in info.items():
        if key != "layers":
            summary.add_row(
                key, json.dumps(value, default=str) if isinstance(value, dict) else str(value)
            )
    what = "‖J − I‖ (Frobenius)" if info.get("kind") == "jacobian" else "the learned update"
    layers = Table(title=f"size per layer (Frobenius norm of {what})")
    for column in ("layer", "update_norm", "bias_norm"):
        layers.add_column(column, justify="right")
    for row in info["layers"]:
        layers.add_row(str(row["layer"]), f"{row['update_norm']:.4g}", f"{row['bias_norm']:.4g}")
    return [summary, layers]
