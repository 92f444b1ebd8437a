"""J-lens files: the published artifact, the fit checkpoint, and our native directory.

The artifact is a torch file (read with ``weights_only``); the checkpoint is the reference
estimator's running sum; ours is a safetensors directory.

Readers return matrices keyed by *our* row (published layer ``ℓ`` = row ``ℓ + 1``) and need no
model; writers take a :class:`~tunedlens.lenses.jacobian.JacobianLens`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tunedlens.errors import LensFileError
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


def _finite(matrices: dict[int, torch.Tensor], where: str) -> None:
    for row, matrix in matrices.items():
        if first_nonfinite(matrix) is not None:
            raise LensFileError(
                f"{where}: the matrix of row {row} holds NaN or Inf; the J-lens is broken."
            )


def read_artifact(path: Path) -> tuple[dict[int, torch.Tensor], int, dict]:
    """Matrices by our row, prompt count and metadata from a published artifact or checkpoint."""
    import pickle

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise LensFileError(
            f"{path} holds Python objects other than tensors, so it was not loaded (unpickling it "
            f"could run code). Detail: {str(error).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise LensFileError(
            f"{path} is truncated or corrupt ({type(error).__name__}); download it again."
        ) from None
    if not isinstance(payload, dict) or not ({"J", "jacobian_sum"} & set(payload)):
        raise LensFileError(
            f"{path} is not a J-lens artifact (no 'J') or fit checkpoint (no 'jacobian_sum')."
        )
    if "J" in payload:
        matrices, n_prompts = payload["J"], int(payload.get("n_prompts", 0))
        declared = payload.get("source_layers")
        if declared is not None and sorted(int(x) for x in declared) != sorted(
            int(x) for x in matrices
        ):
            raise LensFileError(
                f"{path}: source_layers {sorted(declared)} do not match the layers of J "
                f"{sorted(matrices)}; the file is inconsistent."
            )
        d_model = payload.get("d_model")
    else:
        n_prompts = int(payload.get("n_done", 0))
        if n_prompts <= 0:
            raise LensFileError(
                f"{path}: a fit checkpoint with n_done={n_prompts} holds no prompts."
            )
        matrices = {layer: total / n_prompts for layer, total in payload["jacobian_sum"].items()}
        d_model = None
    if (
        not isinstance(matrices, dict)
        or not matrices
        or not all(isinstance(m, torch.Tensor) and m.dim() == 2 for m in matrices.values())
    ):
        raise LensFileError(f"{path}: 'J' must map layers to (d_model, d_model) tensors.")
    shapes = {tuple(m.shape) for m in matrices.values()}
    if len(shapes) != 1 or (d_model is not None and shapes != {(int(d_model), int(d_model))}):
        raise LensFileError(
            f"{path}: the matrices have shapes {sorted(shapes)}, d_model={d_model}."
        )
    by_row = {int(layer) + 1: matrix for layer, matrix in matrices.items()}  # block ℓ -> row ℓ+1
    _finite(by_row, str(path))
    metadata = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
    return by_row, n_prompts, metadata


def write_artifact(lens, path: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write the published format: ``J`` {block layer: matrix} in fp16, and its other keys.

    The other keys are ``n_prompts``, ``source_layers``, ``d_model`` and ``metadata``. Our row 0
    (the embeddings) has no place in it and is left out.
    """
    _write_artifact(path, lens.matrices, lens.n_prompts, lens.metadata, dtype)


def _write_artifact(path: Path, matrices: dict[int, torch.Tensor], n_prompts: int, metadata: dict,
                    dtype: torch.dtype = torch.float16) -> None:  # fmt: skip
    layers = {row - 1: matrix.to(dtype).cpu() for row, matrix in matrices.items() if row >= 1}
    d_model = next(iter(matrices.values())).shape[0]
    payload = {"J": layers, "n_prompts": n_prompts, "source_layers": sorted(layers),
               "d_model": d_model, "metadata": _plain(metadata)}  # fmt: skip
    atomic_write(path, lambda handle: torch.save(payload, handle))


def _plain(metadata: dict) -> dict:
    return json.loads(json.dumps(metadata, default=str))


def write_native(lens, path: Path) -> None:
    """Our format: ``jlens.safetensors`` (one tensor per row) and ``config.json``."""
    model_info = {"num_hidden_layers": lens.n_layers, "base_model_name_or_path": lens.metadata.get("model"),
                  "vocab_size": lens.unembed.vocab_size, "unembed_hash": lens.unembed.hash()}  # fmt: skip
    _write_native(path, lens.matrices, lens.n_prompts, lens.metadata, model_info)


def _write_native(path: Path, matrices: dict[int, torch.Tensor], n_prompts: int, metadata: dict,
                  model_info: dict) -> None:  # fmt: skip
    from safetensors.torch import save

    weights = save({f"row.{row}": m.contiguous().cpu() for row, m in matrices.items()})
    atomic_write(path / NATIVE_JLENS, lambda handle: handle.write(weights))
    config = {"format": JLENS_FORMAT, "format_version": 1,
              "d_model": next(iter(matrices.values())).shape[0], "rows": sorted(matrices),
              "n_prompts": n_prompts, **model_info, "metadata": _plain(metadata)}  # fmt: skip
    atomic_write(path / "config.json", lambda handle: handle.write(json.dumps(config, indent=2).encode()))


def read_native(path: Path) -> tuple[dict[int, torch.Tensor], int, dict, dict]:
    """Matrices by row, prompt count, metadata and model info from our native directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads((path / "config.json").read_text())
        tensors = load_file(path / NATIVE_JLENS, device="cpu")
    except (OSError, json.JSONDecodeError, SafetensorError) as error:
        raise LensFileError(f"{path}: cannot read the J-lens ({error}).") from None
    if config.get("format") != JLENS_FORMAT:
        raise LensFileError(f"{path / 'config.json'} is not a tunedlens J-lens config.")
    matrices = {int(name.split(".")[1]): tensor for name, tensor in tensors.items()}
    _finite(matrices, str(path / NATIVE_JLENS))
    return matrices, int(config.get("n_prompts", 0)), config.get("metadata", {}), config


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
    gets one when it is loaded with its model and saved (``JacobianLens.load(...).save(...)``).
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
        raise ValueError(f"--format for a J-lens must be 'native' or 'artifact', got {format!r}")
    if format == "artifact" and target.suffix != ARTIFACT_SUFFIX:
        raise ValueError(
            f"an artifact is one {ARTIFACT_SUFFIX} file; name DST like lens{ARTIFACT_SUFFIX}, not {target.name!r}"
        )
    if target.resolve() in (found.resolve(), source.resolve()):
        raise ValueError("SRC and DST are the same; write the converted lens elsewhere.")
    if format == "artifact":
        _check_artifact_target(target, force=force)
    else:
        check_out_dir(target, JLENS_OUTPUT, force=force, what="DST", sources=[source, found])
    if found.is_dir():
        matrices, n_prompts, metadata, config = read_native(found)
        model_info = {key: config.get(key) for key in
                      ("num_hidden_layers", "base_model_name_or_path", "vocab_size", "unembed_hash")}  # fmt: skip
    else:
        matrices, n_prompts, metadata = read_artifact(found)
        model_info = {
            "base_model_name_or_path": metadata.get("model") or metadata.get("model_name")
        }
    if format == "artifact":
        if 0 in matrices:
            metadata = {**metadata, "dropped": "row 0 (the embeddings): the artifact format has no place for it"}
        _write_artifact(target, matrices, n_prompts, metadata)
        return target
    staging = staging_dir(target)
    try:
        _write_native(staging, matrices, n_prompts, metadata, model_info)
        publish_dir(staging, target, JLENS_OUTPUT)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
