"""Lens files on disk: the reference ``tuned-lens`` format and our native safetensors format.

Reference format (read and write): ``config.json`` with the keys in :data:`REFERENCE_KEYS` and
``params.pt``, a state dict ``{"{i}.weight": (d, d), "{i}.bias": (d,)}`` of ``nn.Linear`` layers.
It is only ever read with ``torch.load(weights_only=True)``: a pickle holding code is refused.

Native format: ``lens.safetensors`` (stacked translator tensors), ``config.json`` (everything
needed to rebuild the lens) and ``provenance.json`` (how it was made). Neither reading nor writing
needs the model, so files can be inspected and converted anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch

from tunedlens.arch.points import POINTS, Points, blocks_of, row_label
from tunedlens.errors import InputError, LensFileError
from tunedlens.lenses.io.file_checks import (
    check_model_info,
    load_torch_file,
    read_json,
    require_bool,
    require_int,
)
from tunedlens.lenses.translators import (
    AffineTranslator,
    DiagonalTranslator,
    LowRankTranslator,
    MLPTranslator,
)
from tunedlens.metrics.checks import first_nonfinite
from tunedlens.outputs import OutputKind, atomic_write, check_out_dir, publish_dir, staging_dir

LensFormat = Literal["native", "tuned-lens"]
TUNED_FORMATS: tuple[LensFormat, ...] = get_args(LensFormat)
CONFIG_FILE = "config.json"
NATIVE_WEIGHTS = "lens.safetensors"
REFERENCE_WEIGHTS = "params.pt"
PROVENANCE_FILE = "provenance.json"
LENS_FILES = (CONFIG_FILE, REFERENCE_WEIGHTS, NATIVE_WEIGHTS, PROVENANCE_FILE)
"""Every file a lens directory of either format may hold (the one place these names live)."""
WEIGHT_FILES = (NATIVE_WEIGHTS, REFERENCE_WEIGHTS)
LENS_OUTPUT = OutputKind("a tuned lens", LENS_FILES)
"""What ``lens convert`` may replace with ``--force``: a tuned lens directory and nothing else."""
NATIVE_FORMAT_VERSION = 1
REFERENCE_KEYS = (
    "base_model_name_or_path",
    "d_model",
    "num_hidden_layers",
    "bias",
    "base_model_revision",
    "unembed_hash",
    "lens_type",
)
MODEL_INFO_KEYS = (
    "base_model_name_or_path",
    "base_model_revision",
    "model_type",
    "vocab_size",
    "unembed_hash",
)


@dataclass
class LensFile:
    """A lens as stored: its translator, the model it belongs to, and how it was made."""

    translator: AffineTranslator | LowRankTranslator | DiagonalTranslator | MLPTranslator
    model_info: dict
    """``base_model_name_or_path``, ``base_model_revision``, ``model_type``, ``vocab_size``,
    ``unembed_hash``; values may be ``None`` when the file did not record them."""
    provenance: dict = field(default_factory=dict)
    format: LensFormat = "native"
    points: Points = "block"
    """Which points of each block the translators read (see :mod:`tunedlens.arch.points`)."""

    @property
    def n_blocks(self) -> int:
        """Number of decoder blocks ``L`` of the model the lens was made for."""
        return blocks_of(self.points, self.translator.n_rows)


def tuned_format(path: Path) -> LensFormat:
    """Which tuned-lens format the lens directory ``path`` holds (refused when neither).

    :func:`tunedlens.lenses.io.formats.detect_format` tells every kind of lens apart.
    """
    if not path.exists():
        raise LensFileError(f"lens directory {str(path)!r} does not exist; check the path.")
    if not path.is_dir():
        raise LensFileError(
            f"{str(path)!r} is not a lens: a tuned lens is a directory holding config.json and "
            "lens.safetensors (native) or params.pt (tuned-lens), and a J-lens is such a "
            "directory (jlens.safetensors) or a .pt artifact."
        )
    if (path / NATIVE_WEIGHTS).exists():
        return "native"
    if (path / REFERENCE_WEIGHTS).exists():
        return "tuned-lens"
    found = sorted(p.name for p in path.iterdir()) or ["nothing"]
    raise LensFileError(
        f"{str(path)!r} holds no lens: expected lens.safetensors (native) or params.pt "
        f"(tuned-lens), found {', '.join(found)}."
    )


def read_lens(path: str | os.PathLike) -> LensFile:
    """Read a lens directory of either format (no model needed)."""
    path = Path(path)
    fmt = tuned_format(path)
    return _read_native(path) if fmt == "native" else _read_reference(path)


def check_finite(translator, where: str) -> None:
    """Raise :class:`LensFileError` naming the first tensor and layer holding NaN or Inf."""
    for name, tensor in translator.state_dict().items():
        layer = first_nonfinite(tensor)
        if layer is not None:
            raise LensFileError(
                f"{where}: '{name}' holds NaN or Inf values (first at layer {layer}); the lens is "
                "broken. Retrain it, or restore the file from a good copy."
            )


# ---------------------------------------------------------------------------------------------
# reference format


def _load_params_pt(path: Path) -> dict:
    if not path.exists():
        raise LensFileError(f"{path} is missing; a tuned-lens lens directory needs params.pt.")
    fix = " Re-save the lens as a plain state dict of tensors."
    state = load_torch_file(path, "a tuned-lens params.pt", fix)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LensFileError(f"{path} is not a state dict of tensors; it is not a tuned-lens lens.")
    # Some early lenses were saved from the whole module ("layer_translators.0.weight").
    return {k.removeprefix("layer_translators."): v for k, v in state.items()}


def _reference_config(path: Path) -> dict:
    config = read_json(path / CONFIG_FILE, "tuned-lens")
    if "unemebd_hash" in config:  # a typo in early releases of the reference
        config.setdefault("unembed_hash", config.pop("unemebd_hash"))
    unknown = sorted(set(config) - set(REFERENCE_KEYS))
    if unknown:
        warnings.warn(
            f"{path / 'config.json'}: ignoring keys the tuned-lens format does not define: "
            f"{', '.join(unknown)}",
            stacklevel=3,
        )
    lens_type = config.get("lens_type", "linear_tuned_lens")
    if lens_type != "linear_tuned_lens":
        raise LensFileError(
            f"{path / 'config.json'}: lens_type={lens_type!r} is not supported; only "
            "'linear_tuned_lens' lenses exist in the tuned-lens format."
        )
    return config


def _read_reference(path: Path) -> LensFile:
    config = _reference_config(path)
    state = _load_params_pt(path / REFERENCE_WEIGHTS)
    if config.get("num_hidden_layers") is None:  # legacy files: count the translators
        config["num_hidden_layers"] = len({k.split(".")[0] for k in state})
    n_rows = require_int(config, "num_hidden_layers", path / CONFIG_FILE)
    d_model = require_int(config, "d_model", path / CONFIG_FILE)
    use_bias = require_bool(config, "bias", path / CONFIG_FILE, "0.bias" in state)
    check_model_info(config, path / CONFIG_FILE)
    expected = {f"{i}.weight" for i in range(n_rows)}
    expected |= {f"{i}.bias" for i in range(n_rows)} if use_bias else set()
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise LensFileError(
            f"{path / REFERENCE_WEIGHTS} does not match its config.json (num_hidden_layers={n_rows}, "
            f"bias={use_bias}): missing {missing[:4] or 'nothing'}, unexpected {extra[:4] or 'nothing'}."
        )
    translator = AffineTranslator(n_rows, d_model, use_bias=use_bias)
    with torch.no_grad():
        for i in range(n_rows):
            _copy_checked(translator.weight[i], state[f"{i}.weight"], f"{i}.weight", path)
            if use_bias:
                _copy_checked(translator.bias[i], state[f"{i}.bias"], f"{i}.bias", path)
    check_finite(translator, str(path / REFERENCE_WEIGHTS))
    model_info = {key: config.get(key) for key in MODEL_INFO_KEYS}
    provenance_path = path / PROVENANCE_FILE
    provenance = read_json(provenance_path, "") if provenance_path.exists() else {}
    return LensFile(translator, model_info, provenance, "tuned-lens")


def _copy_checked(target: torch.Tensor, source: torch.Tensor, name: str, path: Path) -> None:
    if source.shape != target.shape:
        raise LensFileError(
            f"{path / REFERENCE_WEIGHTS}: '{name}' has shape {tuple(source.shape)}, expected "
            f"{tuple(target.shape)} from config.json (d_model={target.shape[-1]})."
        )
    target.copy_(source.float())


def _write_reference(lens: LensFile, path: Path) -> None:
    translator = lens.translator
    if isinstance(translator, (LowRankTranslator, DiagonalTranslator)):
        translator = translator.to_affine()
    state = {}
    for i in range(translator.n_rows):
        state[f"{i}.weight"] = translator.weight[i].detach().cpu().clone()
        if translator.use_bias:
            state[f"{i}.bias"] = translator.bias[i].detach().cpu().clone()
    config = {
        "base_model_name_or_path": lens.model_info.get("base_model_name_or_path") or "",
        "d_model": translator.d_model,
        "num_hidden_layers": translator.n_rows,
        "bias": translator.use_bias,
        "base_model_revision": lens.model_info.get("base_model_revision"),
        "unembed_hash": lens.model_info.get("unembed_hash"),
        "lens_type": "linear_tuned_lens",
    }
    atomic_write(path / REFERENCE_WEIGHTS, lambda f: torch.save(state, f))
    atomic_write(path / CONFIG_FILE, lambda f: f.write(json.dumps(config).encode()))


# ---------------------------------------------------------------------------------------------
# native format


def _read_native(path: Path) -> LensFile:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_json(path / CONFIG_FILE, "native")
    version = config.get("format_version")
    if config.get("format") != "tunedlens" or version != NATIVE_FORMAT_VERSION:
        raise LensFileError(
            f"{path / 'config.json'} is not a native tunedlens config (format={config.get('format')!r}, "
            f"format_version={version!r}; this tunedlens reads version {NATIVE_FORMAT_VERSION})."
        )
    # Files written before the rows vocabulary name the number of translators num_hidden_layers.
    old = "n_rows" not in config and "num_hidden_layers" in config
    n_rows = require_int(config, "num_hidden_layers" if old else "n_rows", path / CONFIG_FILE)
    d_model = require_int(config, "d_model", path / CONFIG_FILE)
    kind = config.get("translator")
    check_model_info(config, path / CONFIG_FILE)
    if kind == "affine":
        translator = AffineTranslator(
            n_rows, d_model, use_bias=require_bool(config, "use_bias", path / CONFIG_FILE, True)
        )
    elif kind == "lowrank":
        translator = LowRankTranslator(
            n_rows,
            d_model,
            rank=require_int(config, "rank", path / CONFIG_FILE),
            use_temperature=require_bool(config, "use_temperature", path / CONFIG_FILE, False),
        )
    elif kind == "diagonal":
        translator = DiagonalTranslator(n_rows, d_model)
    elif kind == "mlp":
        translator = MLPTranslator(
            n_rows, d_model, hidden=require_int(config, "rank", path / CONFIG_FILE)
        )
    else:
        raise LensFileError(
            f"{path / 'config.json'}: translator={kind!r} is unknown; expected 'affine', 'lowrank', "
            "'diagonal' or 'mlp'."
        )
    try:
        tensors = load_file(path / NATIVE_WEIGHTS, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise LensFileError(
            f"{path / NATIVE_WEIGHTS} is truncated or corrupt ({error}). Copy or download it again."
        ) from None
    expected = translator.state_dict()
    if set(tensors) != set(expected) or any(
        tensors[k].shape != v.shape for k, v in expected.items()
    ):
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        wanted = {k: tuple(v.shape) for k, v in expected.items()}
        raise LensFileError(
            f"{path / NATIVE_WEIGHTS} does not match config.json: it holds {found}, the config "
            f"describes {wanted}."
        )
    translator.load_state_dict({k: v.float() for k, v in tensors.items()})
    check_finite(translator, str(path / NATIVE_WEIGHTS))
    model_info = {key: config.get(key) for key in MODEL_INFO_KEYS}
    provenance_path = path / PROVENANCE_FILE
    provenance = read_json(provenance_path, "") if provenance_path.exists() else {}
    points = config.get("points", "block")
    if points not in POINTS or (points == "both" and n_rows % 2):
        raise LensFileError(
            f"{path / CONFIG_FILE}: 'points' must be one of {', '.join(POINTS)} (with an even "
            f"number of translators for 'both'), found {points!r} with {n_rows}."
        )
    return LensFile(translator, model_info, provenance, "native", points)


def native_config(lens: LensFile) -> dict:
    """The ``config.json`` of the native format for ``lens``."""
    translator = lens.translator
    config = {
        "format": "tunedlens",
        "format_version": NATIVE_FORMAT_VERSION,
        "translator": translator.kind,
        "d_model": translator.d_model,
        "n_rows": translator.n_rows,
    }
    if isinstance(translator, LowRankTranslator):
        config.update(rank=translator.rank, use_temperature=translator.use_temperature)
    elif isinstance(translator, MLPTranslator):
        config.update(rank=translator.hidden)
    else:
        config.update(use_bias=translator.use_bias)
    config.update({key: lens.model_info.get(key) for key in MODEL_INFO_KEYS})
    if lens.points != "block":  # block lenses keep the files they always had
        config["points"] = lens.points
    return config


def _write_native(lens: LensFile, path: Path) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in lens.translator.state_dict().items()}
    atomic_write(path / NATIVE_WEIGHTS, lambda f: f.write(save(tensors)))
    config = json.dumps(native_config(lens), indent=2)
    atomic_write(path / CONFIG_FILE, lambda f: f.write(config.encode()))


def write_lens(lens: LensFile, path: str | os.PathLike, format: LensFormat = "native") -> Path:
    """Write ``lens`` into the directory ``path`` (created if needed) in ``format``.

    Files are written to a temporary name and renamed, so an interrupted save never leaves a
    half-written lens in place of a good one. Other files in the directory are left alone.

    Returns:
        The directory written.
    """
    if format not in TUNED_FORMATS:
        raise InputError(f"format must be 'native' or 'tuned-lens', got {format!r}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LensFileError(f"{str(path)!r} is a file; pass a directory to save the lens into.")
    other = path / (REFERENCE_WEIGHTS if format == "native" else NATIVE_WEIGHTS)
    if other.exists():
        raise LensFileError(
            f"{str(path)!r} already holds a lens in the other format ({other.name}); writing a "
            f"{format} lens beside it would make the directory ambiguous. Choose another directory."
        )
    if format == "tuned-lens" and isinstance(lens.translator, MLPTranslator):
        raise LensFileError(
            "the reference tuned-lens format holds affine translators only; an MLP translator is "
            "not affine, so converting would change the lens. Keep it in the native format."
        )
    if format == "tuned-lens" and lens.points != "block":
        raise LensFileError(
            f"the reference tuned-lens format has one translator per block input; this lens reads "
            f"{lens.points!r} points (after attention, before the MLP), which the reference would "
            "apply at the wrong places. Keep it in the native format."
        )
    path.mkdir(parents=True, exist_ok=True)
    if format == "native":
        _write_native(lens, path)
    else:
        _write_reference(lens, path)
    provenance = json.dumps({**lens.provenance, "format": format}, indent=2, default=str)
    atomic_write(path / PROVENANCE_FILE, lambda f: f.write(provenance.encode()))
    return path


def convert_tuned(source: Path, target: Path, format: str, *, force: bool = False) -> Path:
    """Read the tuned lens directory ``source`` (either format) and write it to ``target`` as ``format``.

    A ``target`` that holds a tuned lens is refused unless ``force`` (then it is replaced once
    the new one is written); one that is or holds ``source``, the current folder, or files of
    anything else is always refused (:func:`tunedlens.outputs.check_out_dir`).
    """
    source, target = Path(source), Path(target)
    if format not in TUNED_FORMATS:
        also = (
            " (artifact is a J-lens format; this is a tuned lens)" if format == "artifact" else ""
        )
        raise InputError(f"--format must be 'native' or 'tuned-lens', got {format!r}{also}")
    if source.resolve() == target.resolve():
        raise InputError("SRC and DST are the same directory; write the converted lens elsewhere.")
    check_out_dir(target, LENS_OUTPUT, force=force, what="DST", sources=[source])
    lens = read_lens(source)
    staging = staging_dir(target)
    try:
        write_lens(lens, staging, format)
        publish_dir(staging, target, LENS_OUTPUT)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _update_norms(lens: LensFile) -> list[dict]:
    translator = lens.translator
    rows = []
    with torch.no_grad():
        for i in range(translator.n_rows):
            bias = translator.bias[i] if translator.bias is not None else torch.zeros(1)
            row = {
                "row": i,
                "label": row_label(lens.points, i, lens.n_blocks),
                "update_norm": translator.update_norm(i),
                "bias_norm": float(bias.norm()),
            }
            log_temperature = translator.log_temperature(i)
            if log_temperature is not None:
                row["temperature"] = float(log_temperature.exp())
            rows.append(row)
    return rows


def describe_tuned(path: Path) -> dict:
    """Format, translator, dimensions, model, provenance and per-row update sizes of a lens."""
    lens = read_lens(path)
    translator = lens.translator
    return {
        "path": str(path),
        "format": lens.format,
        "kind": "tuned",
        "translator": translator.kind,
        "points": lens.points,
        "n_blocks": lens.n_blocks,
        "d_model": translator.d_model,
        "rank": getattr(translator, "rank", None),
        "use_bias": translator.bias is not None,
        "use_temperature": getattr(translator, "use_temperature", False),
        "parameters": sum(p.numel() for p in translator.parameters()),
        **{key: value for key, value in lens.model_info.items()},
        "provenance": lens.provenance,
        "rows": _update_norms(lens),
    }


def package_tuned(path: Path) -> tuple[dict, list[Path]]:
    """What a lens collection's index records of the tuned lens at ``path``, and its files."""
    lens = read_lens(path)
    training = lens.provenance.get("training", {})
    record = {
        "kind": "tuned",
        "format": lens.format,
        "translator": lens.translator.kind,
        "points": lens.points,
        "model": lens.model_info.get("base_model_name_or_path"),
        "model_revision": lens.model_info.get("base_model_revision"),
        "tokenizer_revision": training.get("tokenizer_revision"),
        "vocab_size": lens.model_info.get("vocab_size"),
        "unembed_hash": lens.model_info.get("unembed_hash"),
        "data": training.get("data"),
        "data_content_hash": training.get("data_content_hash"),
        "package_version": lens.provenance.get("tunedlens_version"),
    }
    return record, [path / name for name in LENS_FILES if (path / name).exists()]
