"""Checks shared by the readers of lens files: JSON configs, typed fields, torch files.

Every lens reader (tuned lens in either format, J-lens artifact or native directory) checks its
fields with these, so one bad value gets the same one-line :class:`LensFileError` everywhere.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import torch

from tunedlens.errors import LensFileError


def read_json(path: Path, what: str) -> dict:
    """The JSON object in ``path`` (a config of a ``what`` lens directory)."""
    if not path.exists():
        raise LensFileError(f"{path} is missing; a {what} lens directory needs it.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise LensFileError(f"{path} is not valid JSON ({error}); the file is corrupt.") from None
    if not isinstance(data, dict):
        raise LensFileError(f"{path} must hold a JSON object, found {type(data).__name__}.")
    return data


def check_model_info(config: dict, path: Path) -> None:
    """The model fields of a lens config: strings, a positive vocabulary, a hex fingerprint."""
    for key in ("base_model_name_or_path", "base_model_revision", "model_type"):
        require_type(config, key, path, str, "a string")
    require_int(config, "vocab_size", path, optional=True)
    fingerprint = config.get("unembed_hash")
    if fingerprint is not None and not (
        isinstance(fingerprint, str) and re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    ):
        raise LensFileError(
            f"{path}: 'unembed_hash' must be a sha256 hex digest (64 characters 0-9a-f) or null, "
            f"found {fingerprint!r}."
        )


def require_bool(config: dict, key: str, path: Path, default: bool) -> bool:
    """``config[key]`` (``default`` when absent): true or false."""
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise LensFileError(f"{path}: '{key}' must be true or false, found {value!r}.")
    return value


def require_int(
    config: dict, key: str, path: Path, *, minimum: int = 1, optional: bool = False
) -> int | None:
    """``config[key]``: an integer ``>= minimum`` (or absent/null when ``optional``)."""
    value = config.get(key)
    if optional and value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise LensFileError(
            f"{path}: '{key}' must be {wanted}{' or null' if optional else ''}, found {value!r}."
        )
    return value


def require_type(config: dict, key: str, path: Path, kind: type, name: str):
    """``config[key]`` when it is a ``kind`` (``name`` in the error), or absent/null."""
    value = config.get(key)
    if value is not None and not isinstance(value, kind):
        raise LensFileError(f"{path}: '{key}' must be {name} or null, found {value!r}.")
    return value


def _is_pickle(path: Path) -> bool:
    """Whether ``path`` parses as a pickle stream (opcodes read, nothing executed)."""
    import pickletools

    try:
        with open(path, "rb") as handle:
            for opcode, _arg, _pos in pickletools.genops(handle):
                if opcode.name == "STOP":
                    return True
    except Exception:  # any malformed stream: pickletools raises many kinds
        return False
    return False


def load_torch_file(path: Path, what: str, fix: str = "", *, mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)`` on CPU, each failure one :class:`LensFileError`.

    ``what`` names what the file should be (``"a J-lens artifact"``) and ``fix`` is appended to
    the refusal of a file holding Python objects. Torch's own advice to retry with
    ``weights_only=False`` is never repeated: that would run whatever code the file holds.
    ``mmap`` maps the tensors of a ``torch.save`` archive instead of reading them (to look at
    the keys of a large file); other files are read whole.
    """
    try:
        return torch.load(
            path, weights_only=True, map_location="cpu", mmap=mmap and _is_archive(path)
        )
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)", str(error))
        if found or _is_archive(path):
            name = f" ({found.group(1)})" if found else ""
            raise LensFileError(
                f"{path} holds Python objects other than tensors{name}, so it was not loaded "
                f"(unpickling it could run code).{fix}"
            ) from None
        if _is_pickle(path):
            raise LensFileError(
                f"{path} is a plain Python pickle, not a torch file of tensors, so it was not "
                f"loaded (unpickling it could run code); it is not {what}.{fix}"
            ) from None
        raise LensFileError(
            f"{path} is not a torch file (neither a torch.save archive nor a pickle), so it is "
            f"not {what}; check the path."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, OSError) as error:
        if _is_archive(path):
            raise LensFileError(
                f"{path} is truncated or corrupt and cannot be read ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else 'no detail'}). Download or copy "
                "it again."
            ) from None
        raise LensFileError(
            f"{path} is not a readable torch file ({type(error).__name__}), so it is not {what}: "
            "it is damaged, or another kind of file. Check the path, or download it again."
        ) from None


def _is_archive(path: Path) -> bool:
    """Whether ``path`` starts like the zip archive ``torch.save`` writes (since torch 1.6)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"PK\x03\x04"
    except OSError:
        return False
