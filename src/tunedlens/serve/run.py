"""What ``tunedlens serve`` does, as a function: load, check, then serve on a local port."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

from tunedlens.errors import TunedLensError, require
from tunedlens.serve.session import ServeSession

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_host(host: str, allow_remote: bool) -> None:
    """Loopback only, unless ``allow_remote`` (then a warning: anyone who reaches it can use it)."""
    if host in LOCAL_HOSTS:
        return
    if not allow_remote:
        raise TunedLensError(
            f"--host {host} would let other machines use this model; the explorer has no "
            "authentication. Pass --allow-remote as well if that is what you want."
        )
    warnings.warn(
        f"serving on {host}: anyone who can reach this port can run the model.", stacklevel=2
    )


def read_evals(directories: Sequence[str | Path], names: Sequence[str]) -> dict[str, dict]:
    """Per lens name, its ``metrics.json`` entry (KL per layer, gates) from ``--eval`` folders."""
    evals: dict[str, dict] = {}
    for directory in directories:
        path = Path(directory) / "metrics.json"
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise TunedLensError(f"--eval {directory}: cannot read {path} ({error}).") from None
        lenses = metrics.get("lenses") if isinstance(metrics, dict) else None
        if not isinstance(lenses, dict):
            raise TunedLensError(f"--eval {directory}: {path} is not a tunedlens evaluation report.")
        for name, entry in lenses.items():
            if name in names:
                evals[name] = {
                    "layers": metrics.get("layers"),
                    "kl_bits": entry.get("kl_bits"),
                    "gates": metrics.get("gates", {}).get(name),
                    "report": str(directory),
                }
    return evals


def build_session(model_spec: str, lenses: Sequence[str] = (), evals: Sequence[str] = (), *,
                  max_tokens: int = 512, dtype: str = "float32", device: str | None = None,
                  tokenizer: str | None = None, strict: bool = True) -> ServeSession:  # fmt: skip
    """Load the model and every lens (a lens for another model is refused here, with why)."""
    from tunedlens.lenses.load import LOGIT, align_points, check_location, load_lens, load_lenses
    from tunedlens.models import load_model, need_tokenizer

    if max_tokens < 1:
        raise ValueError(f"--max-tokens must be a positive integer, got {max_tokens}")
    for location in lenses:  # before the model loads
        check_location(location)
    loaded, loaded_tokenizer = load_model(model_spec, dtype=dtype, device=device, tokenizer=tokenizer)
    need_tokenizer(loaded_tokenizer, model_spec)
    named = {LOGIT: load_lens(LOGIT, loaded), **load_lenses(lenses, loaded, strict=strict)}
    named = align_points(named, loaded)  # a mid-point lens is shown beside a mid-point logit lens
    return ServeSession(loaded, loaded_tokenizer, named, model_spec,
                        evals=read_evals(evals, list(named)), max_tokens=max_tokens)  # fmt: skip


def run_server(session: ServeSession, *, host: str = "127.0.0.1", port: int = 8000,
               allow_remote: bool = False) -> None:  # fmt: skip
    """Serve ``session`` until interrupted."""
    check_host(host, allow_remote)
    uvicorn = require("uvicorn", "serve")
    from tunedlens.serve.app import create_app

    uvicorn.run(create_app(session), host=host, port=port, log_level="warning")


def serve_model(model_spec: str, lenses: Sequence[str] = (), evals: Sequence[str] = (), *,
                host: str = "127.0.0.1", port: int = 8000, allow_remote: bool = False,
                on_ready=None, **options) -> None:  # fmt: skip
    """What ``tunedlens serve`` does: check the host, load (see :func:`build_session`), serve.

    ``on_ready`` is called with the page's URL once everything is loaded.
    """
    check_host(host, allow_remote)
    session = build_session(model_spec, lenses, evals, **options)
    if on_ready is not None:
        on_ready(f"http://{host}:{port}/")
    run_server(session, host=host, port=port, allow_remote=allow_remote)
