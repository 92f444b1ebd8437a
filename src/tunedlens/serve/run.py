"""Serving a session: host and port checks, the listening socket, eval reports, the server."""

from __future__ import annotations

import errno
import json
import os
import socket
import warnings
from collections.abc import Sequence
from pathlib import Path

from tunedlens.errors import InputError, TunedLensError, require
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
        raise InputError(f"--port must be a whole number from 1 to 65535, got {port!r}")


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
            raise TunedLensError(
                f"--eval {directory}: {path} is not a tunedlens evaluation report."
            )
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
