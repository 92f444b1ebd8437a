"""``tunedlens lens merge``: merge J-lenses fitted on disjoint prompt slices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunedlens.commands.common import resolve_locations
from tunedlens.jacobian.fit import merge_jacobian_lenses
from tunedlens.jacobian.merge import MergeError, part_for_model, read_parts
from tunedlens.lenses.io.jlens_files import JLENS_OUTPUT
from tunedlens.lenses.jacobian import JacobianLens
from tunedlens.outputs import staged_output


def run(
    model_spec: str,
    parts: Sequence[str],
    out,
    *,
    force: bool = False,
    dtype: str = "float32",
    device: str | None = None,
) -> JacobianLens:
    """What ``tunedlens lens merge`` does: check, load the parts for the model, merge, write.

    The parts are read and checked against each other before the model loads.
    """
    from tunedlens.models import check_device, load_model
    from tunedlens.outputs import check_out_dir, local_inputs

    if len(parts) < 2:
        raise MergeError(f"merging needs at least two J-lenses, got {len(parts)}")
    resolved = resolve_locations(parts)
    check_device(device)
    inputs = local_inputs(model_spec, *parts)
    out = check_out_dir(Path(out), JLENS_OUTPUT, force=force, sources=inputs)
    stored = read_parts(resolved)
    model, _ = load_model(model_spec, dtype=dtype, device=device)
    lenses = [
        part_for_model(part, one, model, model_spec)
        for part, one in zip(parts, stored, strict=True)
    ]
    merged = merge_jacobian_lenses(lenses)
    with staged_output(out, JLENS_OUTPUT) as staging:
        merged.save(staging)
    return merged
