"""``tunedlens serve`` starting up: the port and the ``--eval`` reports are checked before the
model loads, a busy port is one error line, and the server listens on the socket bound then."""

import re
import select
import socket
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tunedlens.commands.serve import run as serve_model  # noqa: E402
from tunedlens.errors import TunedLensError  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def no_model(monkeypatch):
    """Loading the model fails the test: these checks must come first."""

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr("tunedlens.models.load_model", load_model)


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_the_port_must_be_one_a_server_can_listen_on(no_model, port):
    with pytest.raises(
        ValueError, match=f"--port must be a whole number from 1 to 65535, got {port}"
    ):
        serve_model("demo", port=port)


def test_a_busy_port_is_refused_before_the_model_loads(no_model):
    ready = []
    with socket.socket() as other:  # another program serving on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        busy = other.getsockname()[1]
        message = rf"^port {busy} on 127.0.0.1 is in use; pass --port \d+$"
        with pytest.raises(TunedLensError, match=message) as caught:
            serve_model("demo", port=busy, on_ready=ready.append)
    assert ready == []  # no address was announced
    suggested = int(re.search(r"--port (\d+)", str(caught.value)).group(1))
    assert suggested != busy
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", suggested))  # the suggestion is free


def test_an_eval_folder_without_a_report_is_refused_before_the_model_loads(no_model, tmp_path):
    (tmp_path / "report").mkdir()
    with pytest.raises(TunedLensError, match="--eval .*report: the folder holds no metrics.json"):
        serve_model("demo", evals=[str(tmp_path / "report")], port=_free_port())


@pytest.fixture
def served(tiny_model_dir, monkeypatch):
    """``serve_model`` running in a thread; yields its port and the ready line's URL."""
    servers = []

    class Recorded(uvicorn.Server):
        def __init__(self, config):
            super().__init__(config)
            servers.append(self)

    monkeypatch.setattr(uvicorn, "Server", Recorded)
    port, ready = _free_port(), []
    thread = threading.Thread(
        target=serve_model,
        args=(str(tiny_model_dir),),
        kwargs={"port": port, "on_ready": ready.append},
        daemon=True,
    )
    thread.start()
    deadline = time.time() + 60
    while not (servers and servers[0].started) and time.time() < deadline:
        time.sleep(0.05)
    assert servers and servers[0].started, "the server did not start"
    yield port, ready
    servers[0].should_exit = True
    thread.join(10)


def test_the_server_listens_where_it_said(served):
    port, ready = served
    assert ready == [f"http://127.0.0.1:{port}/"]
    assert httpx.get(f"{ready[0]}api/health").json()["status"] == "ok"
    with pytest.raises(TunedLensError, match=f"port {port} on 127.0.0.1 is in use"):
        serve_model("demo", port=port)  # a second explorer on the same port


def test_a_chunked_body_is_refused_once_it_passes_the_limit(served):
    """20 MiB offered without a Content-Length: the 413 comes before the body is all sent."""
    port, _ = served
    chunk = b"x" * 8192
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    offered, sent = 20 * 2**20, 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(
            b"POST /api/readout HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
            b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        while sent < offered and not select.select([conn], [], [], 0)[0]:
            conn.sendall(framed)
            sent += len(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert sent < offered  # answered mid-body, not after reading it all


def test_a_missing_extra_is_named_before_the_model_loads(monkeypatch):
    from tunedlens.errors import MissingExtra

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the extra was checked")

    monkeypatch.setattr("tunedlens.models.load_model", load_model)
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if it were not installed
    with pytest.raises(MissingExtra, match=r"tunedlens\[serve\]"):
        serve_model("demo", port=_free_port())


def test_serve_prints_its_process_id_and_url_at_start(monkeypatch, capsys):
    import os
    import sys

    from tunedlens.cli import main

    calls = []

    def fake_run(model, lenses, evals, *, on_start, on_ready, **options):
        calls.append(model)
        on_start("http://127.0.0.1:8123/")  # as soon as the port is bound
        on_ready("http://127.0.0.1:8123/")

    monkeypatch.setattr("tunedlens.commands.serve.run", fake_run)
    monkeypatch.setattr(sys, "argv", ["tunedlens", "serve", "demo", "--port", "8123"])
    try:
        main()
    except SystemExit as stop:
        assert stop.code in (0, None)
    first, second = capsys.readouterr().out.splitlines()
    assert calls == ["demo"]
    assert (
        first
        == f"tunedlens serve: process {os.getpid()}, http://127.0.0.1:8123/ (loading demo ...)"
    )
    assert f"process {os.getpid()}" in second and "http://127.0.0.1:8123/" in second


def test_on_start_comes_before_the_model_loads(monkeypatch):
    from tunedlens.commands import serve as command

    events = []
    monkeypatch.setattr(
        command, "open_model_and_lenses", lambda *a, **k: events.append("load") or 1 / 0
    )
    port = _free_port()
    with pytest.raises(ZeroDivisionError):
        command.run("demo", port=port, on_start=lambda url: events.append(url))
    assert events == [f"http://127.0.0.1:{port}/", "load"]
