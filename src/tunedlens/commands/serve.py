"""``tunedlens serve``: load the model and lenses, then serve the explorer on a local port."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from tunedlens.commands.common import open_model_and_lenses, resolve_locations
from tunedlens.errors import InputError, require
from tunedlens.serve.run import (
    bind_port,
    check_host,
    check_port,
    evals_for,
    read_reports,
    run_server,
)
from tunedlens.serve.session import ServeSession


def build_session(
    model_spec: str,
    lenses: Sequence[str] = (),
    evals: Sequence[str] = (),
    *,
    max_tokens: int = 512,
    dtype: str = "float32",
    device: str | None = None,
    tokenizer: str | None = None,
    strict: bool = True,
    on_checked: Callable[[], None] | None = None,
) -> ServeSession:
    """Load the model and every lens (a lens for another model is refused here, with why).

    The options, lens locations and ``--eval`` reports are checked first; ``on_checked`` is
    then called, before the model loads.
    """
    if max_tokens < 1:
        raise InputError(f"--max-tokens must be a positive integer, got {max_tokens}")
    resolved = resolve_locations(lenses)  # before the model loads
    reports = read_reports(evals)
    if on_checked is not None:
        on_checked()
    # A mid-point lens is shown beside a mid-point logit lens (aligned by the start-up).
    opened = open_model_and_lenses(
        model_spec, resolved, dtype=dtype, device=device, tokenizer=tokenizer, strict=strict
    )
    return ServeSession(
        opened.model,
        opened.tokenizer,
        opened.lenses,
        model_spec,
        evals=evals_for(reports, list(opened.lenses)),
        max_tokens=max_tokens,
    )


def run(
    model_spec: str,
    lenses: Sequence[str] = (),
    evals: Sequence[str] = (),
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    allow_remote: bool = False,
    on_ready=None,
    on_start=None,
    **options,
) -> None:
    """What ``tunedlens serve`` does: check the host and port, load (see :func:`build_session`), serve.

    The port is bound once the arguments are checked and before the model loads, so a busy port
    fails at once; ``on_start`` is called with the page's URL once it is bound (before the model
    loads), ``on_ready`` once everything is loaded.
    """
    check_host(host, allow_remote)
    check_port(port)
    for module in ("fastapi", "uvicorn"):  # the extra, before the model loads
        require(module, "serve")
    bound: list[socket.socket] = []
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def bind() -> None:
        bound.append(bind_port(host, port))
        if on_start is not None:
            on_start(url)

    try:
        session = build_session(model_spec, lenses, evals, on_checked=bind, **options)
        if on_ready is not None:
            on_ready(url)
        run_server(session, host=host, port=port, allow_remote=allow_remote, listener=bound[0])
    finally:
        for listener in bound:
            listener.close()
