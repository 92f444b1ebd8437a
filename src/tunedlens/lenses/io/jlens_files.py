"""J-lens files: the published artifact, the fit checkpoint, and our native directory.

Three formats (:data:`JLENS_FORMATS`, as :func:`jlens_format` names them): ``jlens-artifact``,
the published torch file (read with ``weights_only``); ``jlens-checkpoint``, the reference
estimator's running sums (a torch file too); ``jlens-native``, ours, a safetensors directory.

Readers return matrices keyed by *our* row (published layer ``ℓ`` = row ``ℓ + 1``) and need no
model; writers take a :class:`~tunedlens.lenses.jacobian.JacobianLens`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from tunedlens.arch.points import row_label
from tunedlens.errors import InputError, LensFileError
from tunedlens.lenses.io.file_checks import (
    check_model_info,
    load_torch_file,
    read_json,
    require_int,
    require_type,
)
from tunedlens.metrics.checks import first_nonfinite
from tunedlens.outputs import (
    OutputError,
    OutputKind,
    atomic_write,
    check_out_dir,
    publish_dir,
    staging_dir,
)

ARTIFACT_SUFFIX = ".pt"
NATIVE_JLENS = "jlens.safetensors"
JLENS_FORMAT = "tunedlens-jlens"
JLENS_OUTPUT = OutputKind("a J-lens", (NATIVE_JLENS, "config.json"))
"""A native J-lens directory: what ``--force`` may replace with a J-lens."""
JLENS_VERSION = 1
JLENS_FORMATS = ("jlens-native", "jlens-artifact", "jlens-checkpoint")
"""The J-lens formats :func:`jlens_format` tells apart (see the module's docstring)."""


def _finite(matrices: dict[int, torch.Tensor], where: str) -> None:
    for row, matrix in matrices.items():
        if first_nonfinite(matrix) is not None:
            raise LensFileError(
                f"{where}: the matrix of row {row} holds NaN or Inf; the J-lens is broken."
            )


def _integers(payload: dict, keys: tuple[str, ...]) -> dict:
    """``payload`` with the 0-d integer tensors under ``keys`` made plain ints."""
    plain = dict(payload)
    for key in keys:
        value = plain.get(key)
        if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
            plain[key] = int(value)
    return plain


def _layer_index(layer, path: Path, key: str) -> int:
    if isinstance(layer, torch.Tensor) and layer.dim() == 0 and not layer.is_floating_point():
        layer = int(layer)
    if isinstance(layer, str) and layer.isdigit():
        layer = int(layer)
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise LensFileError(
            f"{path}: the keys of '{key}' must be block indices (integers >= 0), found {layer!r}."
        )
    return layer


def _payload_format(payload, path: Path) -> str:
    """``jlens-artifact`` (a payload with ``J``) or ``jlens-checkpoint`` (``jacobian_sum``)."""
    if not isinstance(payload, dict) or not ({"J", "jacobian_sum"} & set(payload)):
        raise LensFileError(
            f"{path} is not a J-lens artifact (no 'J') or fit checkpoint (no 'jacobian_sum')."
        )
    return "jlens-artifact" if "J" in payload else "jlens-checkpoint"


def read_artifact(path: Path) -> tuple[dict[int, torch.Tensor], int, dict]:
    """Matrices by our row, prompt count and metadata from a published artifact or checkpoint."""
    matrices, n_prompts, metadata, _ = _read_torch_jlens(path)
    return matrices, n_prompts, metadata


def _read_torch_jlens(path: Path) -> tuple[dict[int, torch.Tensor], int, dict, str]:
    """:func:`read_artifact`, and which of the two formats the file holds."""
    payload = load_torch_file(path, "a J-lens artifact")
    fmt = _payload_format(payload, path)
    payload = _integers(payload, ("n_prompts", "n_done", "d_model"))
    if fmt == "jlens-artifact":
        key, matrices = "J", payload["J"]
        n_prompts = require_int(payload, "n_prompts", path, minimum=0, optional=True) or 0
        d_model = require_int(payload, "d_model", path, optional=True)
    else:
        key, matrices = "jacobian_sum", payload["jacobian_sum"]
        n_prompts = require_int(payload, "n_done", path, minimum=1)
        d_model = None
    if (
        not isinstance(matrices, dict)
        or not matrices
        or not all(isinstance(m, torch.Tensor) and m.dim() == 2 for m in matrices.values())
    ):
        raise LensFileError(f"{path}: '{key}' must map layers to (d_model, d_model) tensors.")
    matrices = {_layer_index(layer, path, key): matrix for layer, matrix in matrices.items()}
    if key == "jacobian_sum":
        matrices = {layer: total / n_prompts for layer, total in matrices.items()}
    declared = payload.get("source_layers")
    if declared is not None:
        if not isinstance(declared, (list, tuple)):
            raise LensFileError(
                f"{path}: 'source_layers' must be a list of block indices, found {declared!r}."
            )
        declared = sorted(_layer_index(layer, path, "source_layers") for layer in declared)
        if declared != sorted(matrices):
            raise LensFileError(
                f"{path}: source_layers {declared} do not match the layers of J "
                f"{sorted(matrices)}; the file is inconsistent."
            )
    shapes = {tuple(m.shape) for m in matrices.values()}
    square = len(shapes) == 1 and len(set(next(iter(shapes)))) == 1
    if not square or (d_model is not None and shapes != {(d_model, d_model)}):
        raise LensFileError(
            f"{path}: the matrices have shapes {sorted(shapes)}, d_model={d_model}."
        )
    by_row = {layer + 1: matrix for layer, matrix in matrices.items()}  # block ℓ -> row ℓ+1
    _finite(by_row, str(path))
    metadata = require_type(payload, "metadata", path, dict, "a dict") or {}
    return by_row, n_prompts, metadata, fmt


def write_artifact(lens, path: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write the published format: ``J`` {block layer: matrix} in fp16, and its other keys.

    The other keys are ``n_prompts``, ``source_layers``, ``d_model`` and ``metadata``. Our row 0
    (the embeddings) has no place in it and is left out.
    """
    _write_artifact(path, lens.matrices, lens.n_prompts, lens.metadata, dtype)


def _write_artifact(
    path: Path,
    matrices: dict[int, torch.Tensor],
    n_prompts: int,
    metadata: dict,
    dtype: torch.dtype = torch.float16,
) -> None:
    layers = {row - 1: matrix.to(dtype).cpu() for row, matrix in matrices.items() if row >= 1}
    d_model = next(iter(matrices.values())).shape[0]
    payload = {
        "J": layers,
        "n_prompts": n_prompts,
        "source_layers": sorted(layers),
        "d_model": d_model,
        "metadata": _plain(metadata),
    }
    atomic_write(path, lambda handle: torch.save(payload, handle))


def _plain(metadata: dict) -> dict:
    return json.loads(json.dumps(metadata, default=str))


def write_native(lens, path: Path) -> None:
    """Our format: ``jlens.safetensors`` (one tensor per row) and ``config.json``."""
    model_info = {
        "num_hidden_layers": lens.n_blocks,
        "base_model_name_or_path": lens.metadata.get("model"),
        "vocab_size": lens.unembed.vocab_size,
        "unembed_hash": lens.unembed.hash(),
    }
    _write_native(path, lens.matrices, lens.n_prompts, lens.metadata, model_info)


def _write_native(
    path: Path, matrices: dict[int, torch.Tensor], n_prompts: int, metadata: dict, model_info: dict
) -> None:
    from safetensors.torch import save

    weights = save({f"row.{row}": m.contiguous().cpu() for row, m in matrices.items()})
    atomic_write(path / NATIVE_JLENS, lambda handle: handle.write(weights))
    config = {
        "format": JLENS_FORMAT,
        "format_version": JLENS_VERSION,
        "d_model": next(iter(matrices.values())).shape[0],
        "rows": sorted(matrices),
        "n_prompts": n_prompts,
        **model_info,
        "metadata": _plain(metadata),
    }
    atomic_write(
        path / "config.json", lambda handle: handle.write(json.dumps(config, indent=2).encode())
    )


def read_native(path: Path) -> tuple[dict[int, torch.Tensor], int, dict, dict]:
    """Matrices by row, prompt count, metadata and config from our native directory.

    Every field of ``config.json`` is type-checked (with the tuned-lens reader's checks).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    where = path / "config.json"
    config = read_json(where, "Jacobian")
    if config.get("format") != JLENS_FORMAT or config.get("format_version") != JLENS_VERSION:
        raise LensFileError(
            f"{where} is not a tunedlens J-lens config (format={config.get('format')!r}, "
            f"format_version={config.get('format_version')!r}; this tunedlens reads "
            f"{JLENS_FORMAT!r} version {JLENS_VERSION})."
        )
    d_model = require_int(config, "d_model", where)
    n_prompts = require_int(config, "n_prompts", where, minimum=0, optional=True) or 0
    require_int(config, "num_hidden_layers", where, optional=True)
    check_model_info(config, where)
    metadata = require_type(config, "metadata", where, dict, "a JSON object") or {}
    rows = config.get("rows")
    if rows is not None and not (
        isinstance(rows, list)
        and all(isinstance(row, int) and not isinstance(row, bool) and row >= 0 for row in rows)
    ):
        raise LensFileError(f"{where}: 'rows' must be a list of row numbers >= 0, found {rows!r}.")
    try:
        tensors = load_file(path / NATIVE_JLENS, device="cpu")
    except (OSError, SafetensorError, ValueError) as error:
        raise LensFileError(
            f"{path / NATIVE_JLENS} is truncated or corrupt ({error}). Copy or download it again."
        ) from None
    matrices = {}
    for name, tensor in tensors.items():
        prefix, _, row = name.partition(".")
        if prefix != "row" or not row.isdigit():
            raise LensFileError(
                f"{path / NATIVE_JLENS} holds {name!r}; a J-lens holds tensors 'row.N' only."
            )
        if tuple(tensor.shape) != (d_model, d_model):
            raise LensFileError(
                f"{path / NATIVE_JLENS}: {name!r} has shape {tuple(tensor.shape)}, config.json "
                f"says d_model={d_model}."
            )
        matrices[int(row)] = tensor
    if not matrices or (rows is not None and sorted(rows) != sorted(matrices)):
        raise LensFileError(
            f"{path / NATIVE_JLENS} holds rows {sorted(matrices)}, config.json lists {rows}; the "
            "J-lens is inconsistent."
        )
    _finite(matrices, str(path / NATIVE_JLENS))
    return matrices, n_prompts, metadata, config


@dataclass
class StoredJLens:
    """A J-lens as stored, read without the model.

    Attributes:
        path: The artifact file or native directory.
        format: ``"jlens-native"``, ``"jlens-artifact"`` (a published file) or
            ``"jlens-checkpoint"`` (the reference estimator's running sums).
        matrices: Our row -> ``(d_model, d_model)`` matrix, in the stored dtype.
        n_prompts: Prompts averaged into the fit (0 when not recorded).
        metadata: Provenance (fit settings, data, parts).
        model_info: :data:`MODEL_KEYS` (``None`` where the file does not record them).
    """

    path: Path
    format: str
    matrices: dict[int, torch.Tensor]
    n_prompts: int
    metadata: dict
    model_info: dict


MODEL_KEYS = ("num_hidden_layers", "base_model_name_or_path", "vocab_size", "unembed_hash")
"""The model a native J-lens records (``config.json``)."""


def read_stored_jlens(path: Path) -> StoredJLens:
    """The J-lens at ``path`` (an artifact, a fit checkpoint or a native directory)."""
    found = jlens_file(path)
    if found is None:
        raise LensFileError(f"{path} holds no J-lens (a .pt artifact or {NATIVE_JLENS}).")
    if found.is_dir():
        matrices, n_prompts, metadata, config = read_native(found)
        info = {key: config.get(key) for key in MODEL_KEYS}
        return StoredJLens(found, "jlens-native", matrices, n_prompts, metadata, info)
    matrices, n_prompts, metadata, fmt = _read_torch_jlens(found)
    name = metadata.get("model") or metadata.get("model_name")
    info = {key: None for key in MODEL_KEYS}
    info["base_model_name_or_path"] = name if isinstance(name, str) else None
    return StoredJLens(found, fmt, matrices, n_prompts, metadata, info)


def jlens_file(path: Path) -> Path | None:
    """The J-lens file or directory at ``path``, or None when it holds none."""
    if path.is_file() and path.suffix == ARTIFACT_SUFFIX:
        return path
    if path.is_dir():
        if (path / NATIVE_JLENS).exists():
            return path
        artifacts = sorted(path.glob(f"*{ARTIFACT_SUFFIX}"))
        if len(artifacts) == 1 and artifacts[0].name != "params.pt":
            return artifacts[0]
    return None


def jlens_format(path: Path) -> str | None:
    """Which J-lens format ``path`` holds (one of :data:`JLENS_FORMATS`), or None when none.

    A torch file is opened memory-mapped, so telling an artifact from a checkpoint reads no
    matrix; one that is neither (or no torch file of tensors) is refused here, as loading would.
    """
    found = jlens_file(path)
    if found is None:
        return None
    if found.is_dir():
        return "jlens-native"
    return _payload_format(load_torch_file(found, "a J-lens artifact", mmap=True), found)


def describe_jlens(path: Path) -> dict:
    """Format, rows with a matrix, dimensions, provenance and ``‖J − I‖`` per row of a J-lens."""
    stored = read_stored_jlens(path)
    matrices, n_prompts, metadata = stored.matrices, stored.n_prompts, stored.metadata
    n_blocks = stored.model_info["num_hidden_layers"]
    # Matrices sit on block rows below the output row (artifacts need not record the depth).
    label_blocks = n_blocks if n_blocks is not None else max(matrices) + 1
    d_model = next(iter(matrices.values())).shape[0]
    eye = torch.eye(d_model)
    return {
        "path": str(path),
        "format": stored.format,
        "kind": "jacobian",
        "n_blocks": n_blocks,
        "d_model": d_model,
        "rows_with_matrix": sorted(matrices),
        "note": "rows without a matrix decode as the logit lens",
        "n_prompts": n_prompts,
        "dtype": str(next(iter(matrices.values())).dtype).removeprefix("torch."),
        "provenance": metadata,
        "rows": [
            {
                "row": row,
                "label": row_label("block", row, label_blocks),
                "update_norm": float((m.float() - eye).norm()),
            }
            for row, m in sorted(matrices.items())
        ],
    }


def package_jlens(path: Path) -> tuple[dict, list[Path]]:
    """What a lens collection's index records of the J-lens at ``path``, and its files.

    A checkpoint is filed as it is, under the artifact's format name (loading reads either).
    """
    found = jlens_file(path)
    if found is None:
        raise LensFileError(f"{path} holds no J-lens (a .pt artifact or {NATIVE_JLENS}).")
    if found.is_file():
        _, n_prompts, metadata = read_artifact(found)
        record = {
            "kind": "jacobian",
            "format": "artifact",
            "n_prompts": n_prompts,
            "model": metadata.get("model") or metadata.get("model_name"),
            "model_revision": metadata.get("model_revision"),
            "data": metadata.get("corpus") or metadata.get("data"),
        }
        return record, [found]
    _, n_prompts, metadata, config = read_native(found)
    record = {
        "kind": "jacobian",
        "format": "native",
        "n_prompts": n_prompts,
        "model": config.get("base_model_name_or_path") or metadata.get("model"),
        "vocab_size": config.get("vocab_size"),
        "unembed_hash": config.get("unembed_hash"),
        "data": metadata.get("data"),
        "data_content_hash": metadata.get("data_content_hash"),
        "package_version": metadata.get("tunedlens_version"),
    }
    return record, [found / "config.json", found / NATIVE_JLENS]


def _check_artifact_target(target: Path, *, force: bool) -> None:
    """An artifact file to write: new, or (``force``) a J-lens artifact that may be replaced."""
    if target.is_dir():
        raise OutputError(
            f"DST {str(target)!r} is a directory; name the {ARTIFACT_SUFFIX} file to write."
        )
    if not target.exists():
        return
    try:
        read_artifact(target)
    except LensFileError:
        raise OutputError(
            f"DST {str(target)!r} already exists and is not a J-lens artifact (--force replaces "
            "only a J-lens); choose another file name (nothing was overwritten)."
        ) from None
    if not force:
        raise OutputError(
            f"DST {str(target)!r} already exists; choose another, or pass --force to replace it "
            "(nothing was overwritten)."
        )


def convert_jlens(source: Path, target: Path, format: str, *, force: bool = False) -> Path:
    """Rewrite the J-lens at ``source`` (artifact, fit checkpoint or native) as ``format``.

    ``native`` writes a directory; ``artifact`` writes the published ``.pt`` file (row 0, the
    embeddings, has no place there and is dropped, with a note in the metadata). Without the
    model no unembedding fingerprint can be recorded: a native lens converted from an artifact
    gets one when it is loaded with its model and saved (``load_lens(...).save(...)``).
    ``target`` must not exist unless ``force``, and then hold a J-lens of the same format:
    ``--force`` replaces a J-lens, nothing else.
    """
    found = jlens_file(source)
    if found is None:
        raise LensFileError(f"{source} holds no J-lens (a .pt artifact or {NATIVE_JLENS}).")
    if format == "tuned-lens":
        raise LensFileError(
            "the reference tuned-lens format holds affine translators only, not a J-lens; convert "
            "to 'native' (a directory) or 'artifact' (the published .pt file)."
        )
    if format not in ("native", "artifact"):
        raise InputError(f"--format for a J-lens must be 'native' or 'artifact', got {format!r}")
    if format == "artifact" and target.suffix != ARTIFACT_SUFFIX:
        raise InputError(
            f"an artifact is one {ARTIFACT_SUFFIX} file; name DST like lens{ARTIFACT_SUFFIX}, not {target.name!r}"
        )
    if target.resolve() in (found.resolve(), source.resolve()):
        raise InputError("SRC and DST are the same; write the converted lens elsewhere.")
    if format == "artifact":
        _check_artifact_target(target, force=force)
    else:
        check_out_dir(target, JLENS_OUTPUT, force=force, what="DST", sources=[source, found])
    if found.is_dir():
        matrices, n_prompts, metadata, config = read_native(found)
        model_info = {
            key: config.get(key)
            for key in (
                "num_hidden_layers",
                "base_model_name_or_path",
                "vocab_size",
                "unembed_hash",
            )
        }
    else:
        matrices, n_prompts, metadata = read_artifact(found)
        model_info = {
            "base_model_name_or_path": metadata.get("model") or metadata.get("model_name")
        }
    if format == "artifact":
        if 0 in matrices:
            metadata = {
                **metadata,
                "dropped": "row 0 (the embeddings): the artifact format has no place for it",
            }
        _write_artifact(target, matrices, n_prompts, metadata)
        return target
    staging = staging_dir(target)
    try:
        _write_native(staging, matrices, n_prompts, metadata, model_info)
        publish_dir(staging, target, JLENS_OUTPUT)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
