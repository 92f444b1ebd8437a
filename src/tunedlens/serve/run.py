"""What ``tunedlens serve`` does, as a function: load, check, then serve on a local port."""

from __future__ import annotations

import errno
import json
import os
import socket
import warnings
from collections.abc import Callable, Sequence
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


def check_port(port: int) -> None:
    """A TCP port a server can listen on: 1..65535 (0 would pick a port nobody is told about)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"--port must be a whole number from 1 to 65535, got {port!r}")


def bind_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for the server to listen on, or a clear error if it can't be.

    Binding before the model loads turns a busy port into one line, before the wait and before
    the page's address is announced; the server then listens on this very socket, so no other
    program can take the port in between.
    """
    check_port(port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    if os.name != "nt":  # as uvicorn does: a port left in TIME_WAIT by a stopped server is free
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        if error.errno == errno.EADDRINUSE:
            raise TunedLensError(
                f"port {port} on {host} is in use; pass --port {_free_port(host, family)}"
            ) from None
        raise TunedLensError(
            f"cannot listen on {host} port {port}: {error.strerror or error}; pass another --host "
            "or --port."
        ) from None
    return listener


def _free_port(host: str, family: socket.AddressFamily) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def read_reports(directories: Sequence[str | Path]) -> list[tuple[str, dict]]:
    """Each ``--eval`` folder with its ``metrics.json``, checked (no model is needed for this)."""
    reports = []
    for directory in directories:
        path = Path(directory) / "metrics.json"
        if Path(directory).is_dir() and not path.exists():
            raise TunedLensError(
                f"--eval {directory}: the folder holds no metrics.json, so it is not an evaluation "
                "report; pass the --out folder of a 'tunedlens eval' run."
            )
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise TunedLensError(f"--eval {directory}: cannot read {path} ({error}).") from None
        lenses = metrics.get("lenses") if isinstance(metrics, dict) else None
        if not isinstance(lenses, dict):
            raise TunedLensError(f"--eval {directory}: {path} is not a tunedlens evaluation report.")
        reports.append((str(directory), metrics))
    return reports


def evals_for(reports: Sequence[tuple[str, dict]], names: Sequence[str]) -> dict[str, dict]:
    """Per lens name, its entry (KL per layer, gates) in the reports of :func:`read_reports`."""
    evals: dict[str, dict] = {}
    for directory, metrics in reports:
        for name, entry in metrics["lenses"].items():
            if name in names:
                evals[name] = {
                    "layers": metrics.get("layers"),
                    "kl_bits": entry.get("kl_bits"),
                    "gates": metrics.get("gates", {}).get(name),
                    "report": directory,
                }
    return evals


def build_session(model_spec: str, lenses: Sequence[str] = (), evals: Sequence[str] = (), *,
                  max_tokens: int = 512, dtype: str = "float32", device: str | None = None,
                  tokenizer: str | None = None, strict: bool = True,
                  on_checked: Callable[[], None] | None = None) -> ServeSession:  # fmt: skip
    """Load the model and every lens (a lens for another model is refused here, with why).

    The options, lens locations and ``--eval`` reports are checked first; ``on_checked`` is
    then called, before the model loads.
    """
    from tunedlens.lenses.io.load import LOGIT, align_points, check_location, load_lens, load_lenses
    from tunedlens.models import load_model, need_tokenizer

    if max_tokens < 1:
        raise ValueError(f"--max-tokens must be a positive integer, got {max_tokens}")
    for location in lenses:  # before the model loads
        check_location(location)
    reports = read_reports(evals)
    if on_checked is not None:
        on_checked()
    loaded, loaded_tokenizer = load_model(model_spec, dtype=dtype, device=device, tokenizer=tokenizer)
    need_tokenizer(loaded_tokenizer, model_spec)
    named = {LOGIT: load_lens(LOGIT, loaded), **load_lenses(lenses, loaded, strict=strict)}
    named = align_points(named, loaded)  # a mid-point lens is shown beside a mid-point logit lens
    return ServeSession(loaded, loaded_tokenizer, named, model_spec,
                        evals=evals_for(reports, list(named)), max_tokens=max_tokens)  # fmt: skip


def run_server(
    session: ServeSession,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_remote: bool = False,
    listener: socket.socket | None = None,
) -> None:
    """Serve ``session`` until interrupted, on ``listener`` (from :func:`bind_port`) if given."""
    check_host(host, allow_remote)
    uvicorn = require("uvicorn", "serve")
    from tunedlens.serve.app import create_app

    listener = listener if listener is not None else bind_port(host, port)
    config = uvicorn.Config(create_app(session), host=host, port=port, log_level="warning")
    with listener:
        uvicorn.Server(config).run(sockets=[listener])


def serve_model(model_spec: str, lenses: Sequence[str] = (), evals: Sequence[str] = (), *,
                host: str = "127.0.0.1", port: int = 8000, allow_remote: bool = False,
                on_ready=None, **options) -> None:  # fmt: skip
    """What ``tunedlens serve`` does: check the host and port, load (see :func:`build_session`), serve.

    The port is bound once the arguments are checked and before the model loads, so a busy port
    fails at once; ``on_ready`` is called with the page's URL once everything is loaded.
    """
    check_host(host, allow_remote)
    check_port(port)
    bound: list[socket.socket] = []
    try:
        session = build_session(
            model_spec, lenses, evals, on_checked=lambda: bound.append(bind_port(host, port)), **options
        )
        if on_ready is not None:
            on_ready(f"http://{f'[{host}]' if ':' in host else host}:{port}/")
        run_server(session, host=host, port=port, allow_remote=allow_remote, listener=bound[0])
    finally:
        for listener in bound:
            listener.close()
