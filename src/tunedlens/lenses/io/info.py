"""A summary of a lens directory, for ``tunedlens lens info``."""

from __future__ import annotations

from pathlib import Path

import torch

from tunedlens.arch.points import row_label
from tunedlens.lenses.io.files import LensFile, read_lens


def _update_norms(lens: LensFile) -> list[dict]:
    translator = lens.translator
    rows = []
    with torch.no_grad():
        for i in range(translator.n_layers):
            bias = translator.bias[i] if translator.bias is not None else torch.zeros(1)
            layer = i if lens.points == "block" else row_label(lens.points, i, translator.n_layers)
            row = {"layer": layer, "update_norm": translator.update_norm(i), "bias_norm": float(bias.norm())}
            log_temperature = translator.log_temperature(i)
            if log_temperature is not None:
                row["temperature"] = float(log_temperature.exp())
            rows.append(row)
    return rows


def describe_jlens(path: Path) -> dict:
    """Format, rows with a matrix, dimensions, provenance and ``‖J − I‖`` per row of a J-lens."""
    from tunedlens.lenses.io.jlens_files import read_stored_jlens

    stored = read_stored_jlens(path)
    matrices, n_prompts, metadata = stored.matrices, stored.n_prompts, stored.metadata
    fmt, n_layers = stored.format, stored.model_info["num_hidden_layers"]
    d_model = next(iter(matrices.values())).shape[0]
    eye = torch.eye(d_model)
    return {
        "path": str(path),
        "format": fmt,
        "kind": "jacobian",
        "n_layers": n_layers,
        "d_model": d_model,
        "rows_with_matrix": sorted(matrices),
        "note": "rows without a matrix decode as the logit lens",
        "n_prompts": n_prompts,
        "dtype": str(next(iter(matrices.values())).dtype).removeprefix("torch."),
        "provenance": metadata,
        "layers": [{"layer": row, "update_norm": float((m.float() - eye).norm()), "bias_norm": 0.0}
                   for row, m in sorted(matrices.items())],
    }


def describe_lens(path: str | Path) -> dict:
    """Format, translator, dimensions, model, provenance and per-layer update sizes of a lens.

    ``path`` is a lens directory (or a J-lens artifact) or a hub location
    (:mod:`tunedlens.lenses.io.locations`).
    """
    from tunedlens.lenses.io.jlens_files import jlens_file
    from tunedlens.lenses.io.locations import lens_dir

    local = lens_dir(path)
    if jlens_file(Path(local)) is not None:
        return describe_jlens(Path(local))
    lens = read_lens(local)
    translator = lens.translator
    return {
        "path": str(path),
        "format": lens.format,
        "translator": translator.kind,
        "points": lens.points,
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
