"""A summary of a lens directory, for ``tunedlens lens info``."""

from __future__ import annotations

from pathlib import Path

import torch

from tunedlens.lenses.files import LensFile, read_lens
from tunedlens.lenses.translators import AffineTranslator


def _update_norms(lens: LensFile) -> list[dict]:
    translator = lens.translator
    rows = []
    with torch.no_grad():
        for i in range(translator.n_layers):
            if isinstance(translator, AffineTranslator):
                update = translator.weight[i]
            else:
                update = translator.V[i] @ translator.U[i].T
            bias = translator.bias[i] if translator.bias is not None else torch.zeros(1)
            row = {"layer": i, "update_norm": float(update.norm()), "bias_norm": float(bias.norm())}
            log_temperature = translator.log_temperature(i)
            if log_temperature is not None:
                row["temperature"] = float(log_temperature.exp())
            rows.append(row)
    return rows


def describe_lens(path: str | Path) -> dict:
    """Format, translator, dimensions, model, provenance and per-layer update sizes of a lens.

    ``path`` is a lens directory or a hub location (:mod:`tunedlens.lenses.locations`).
    """
    from tunedlens.lenses.locations import lens_dir

    lens = read_lens(lens_dir(path))
    translator = lens.translator
    return {
        "path": str(path),
        "format": lens.format,
        "translator": translator.kind,
        "n_layers": translator.n_layers,
        "d_model": translator.d_model,
        "rank": getattr(translator, "rank", None),
        "use_bias": translator.bias is not None,
        "use_temperature": getattr(translator, "use_temperature", False),
        "parameters": sum(p.numel() for p in translator.parameters()),
        **{key: value for key, value in lens.model_info.items()},
        "provenance": lens.provenance,
        "layers": _update_norms(lens),
    }


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
    layers = Table(title="translator size per layer (Frobenius norm of the learned update)")
    for column in ("layer", "update_norm", "bias_norm"):
        layers.add_column(column, justify="right")
    for row in info["layers"]:
        layers.add_row(str(row["layer"]), f"{row['update_norm']:.4g}", f"{row['bias_norm']:.4g}")
    return [summary, layers]
