"""The explorer's JSON API against the library's readout, its limits and its errors."""

import json
import math
import threading

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from tiny_models import random_lens, tiny_model
from tunedlens import LogitLens, readout
from tunedlens.errors import LensMismatch
from tunedlens.serve.app import create_app
from tunedlens.serve.session import ServeSession
from tunedlens.view.tokens import format_token

PROMPT = "w5 w17 w3 w99 w42"


@pytest.fixture
def session(model, lens, tiny_tokenizer):
    return ServeSession(
        model,
        tiny_tokenizer,
        {"logit": LogitLens(model), "tuned": lens},
        "tiny-llama",
        max_tokens=16,
    )


@pytest.fixture
def client(session):
    return TestClient(create_app(session))


def test_health_lenses_and_the_page(client):
    assert client.get("/api/health").json() == {"status": "ok", "model": "tiny-llama"}
    info = client.get("/api/lenses").json()
    assert [lens["name"] for lens in info["lenses"]] == ["logit", "tuned"]
    assert info["lenses"][1]["kind"] == "tuned" and info["n_blocks"] == 2
    from tunedlens import STATS

    # The page offers, and the API takes, every statistic STATS lists (the five views first).
    assert [s["name"] for s in info["stats"]][:5] == ["entropy", "kl", "ce", "max-prob", "rank"]
    assert sorted(s["name"] for s in info["stats"]) == sorted(STATS)
    page = client.get("/").text
    assert "/static/app.js" in page and "http://" not in page and "https://" not in page
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert "/api/readout" in client.get("/openapi.json").json()["paths"]


def test_readout_equals_the_library(client, model, lens, tiny_tokenizer):
    view = client.post(
        "/api/readout", json={"prompt": PROMPT, "lenses": ["tuned", "logit"], "stat": "kl"}
    ).json()
    ids = tiny_tokenizer(PROMPT, return_tensors="pt").input_ids
    expected = readout(model, {"tuned": lens}, ids, stats=("kl",), top_k=1)["tuned"]
    assert view["rows"] == ["0", "1", "output"] and view["positions"] == list(range(5))
    got = view["lenses"]["tuned"]
    assert got["top1"] == [
        [format_token(tiny_tokenizer, int(i)) for i in row] for row in expected.top_ids[0, :, :, 0]
    ]
    torch.testing.assert_close(
        torch.tensor(got["values"], dtype=torch.float64),
        expected["kl"][0].double() / 0.6931471805599453,
        atol=1e-5,
        rtol=1e-5,
    )
    torch.testing.assert_close(torch.tensor(got["top1_prob"]), expected.top_probs[0, :, :, 0])
    assert view["stat"]["units"] == "bits"
    # Token ids beside the display tokens, for the prompt and the top-1 predictions.
    assert view["token_ids"] == ids[0].tolist()
    assert view["tokens"] == [format_token(tiny_tokenizer, i) for i in view["token_ids"]]
    assert got["top1_ids"] == expected.top_ids[0, :, :, 0].tolist()


@pytest.mark.parametrize("stat", ["prob", "model-rank", "cos"])
def test_every_listed_statistic_is_served(client, model, tiny_tokenizer, stat):
    view = client.post("/api/readout", json={"prompt": PROMPT, "stat": stat}).json()
    ids = tiny_tokenizer(PROMPT, return_tensors="pt").input_ids
    expected = readout(model, LogitLens(model), ids, stats=(stat,), top_k=1)["logit"][stat][0]
    values = view["lenses"]["logit"]["values"]  # null where undefined (no next token)
    got = torch.tensor(
        [[math.nan if v is None else v for v in row] for row in values], dtype=torch.float64
    )
    finite = expected.isfinite()
    assert (got.isfinite() == finite).all()
    torch.testing.assert_close(got[finite], expected.double()[finite], atol=1e-5, rtol=1e-5)
    assert view["stat"]["name"] == stat


def test_the_probability_of_a_chosen_token(client, model, tiny_tokenizer):
    view = client.post(
        "/api/readout", json={"prompt": PROMPT, "stat": "prob", "token": "w3"}
    ).json()
    assert view["token"]["text"] == "w3"
    assert view["lenses"]["logit"]["values"] == view["lenses"]["logit"]["token_probs"]


def test_rank_of_a_chosen_token_a_cell_window_and_stride(client):
    view = client.post(
        "/api/readout",
        json={"prompt": PROMPT, "stat": "rank", "token": "w3", "window": 2, "stride": 2},
    ).json()
    assert (
        view["positions"] == [3, 4] and view["truncated"] and view["rows"] == ["0", "1", "output"]
    )
    assert view["token"]["text"] == "w3"
    ranks = view["lenses"]["logit"]["values"]
    assert all(1 <= r <= 128 for row in ranks for r in row)
    cell = client.post(
        "/api/cell", json={"prompt": PROMPT, "lens": "tuned", "row": "1", "position": 4}
    ).json()
    assert len(cell["top"]) == 10 and cell["top"][0]["prob"] >= cell["top"][1]["prob"]
    assert len(cell["probs"]) == 3 and all(0 <= p <= 1 for p in cell["probs"])
    assert cell["probs"][1] == pytest.approx(cell["top"][0]["prob"], abs=1e-6)  # row 1 itself
    assert cell["token_id"] == cell["top"][0]["id"]
    bad = client.post("/api/cell", json={"prompt": PROMPT, "row": "9", "position": 0})
    assert bad.status_code == 400 and "'9' is not a row" in bad.json()["error"]


def test_compare(client):
    view = client.post("/api/compare", json={"prompt": PROMPT, "other": "w5 w17 w9 w99 w42"}).json()
    assert len(view["values"]) == 3 and len(view["values"][0]) == 5
    assert all(0 <= v <= 1 for row in view["values"] for v in row)
    assert all(v < 1e-5 for v in (view["values"][0][0], view["values"][0][1]))  # same prefix
    assert any("/" in label for row in view["labels"] for label in row)
    assert len(view["token_ids"]) == len(view["other_token_ids"]) == 5
    assert view["token_ids"][2] != view["other_token_ids"][2]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/readout", {"prompt": ""}, 400, "empty"),
        ("/api/readout", {"prompt": " ".join(["w1"] * 17)}, 400, "limit is 16"),
        ("/api/readout", {"prompt": PROMPT, "stat": "perplexity"}, 400, "perplexity"),
        ("/api/readout", {"prompt": PROMPT, "lenses": ["mine"]}, 400, "unknown lens 'mine'"),
        ("/api/readout", {"prompt": PROMPT, "stride": 0}, 400, "stride"),
        ("/api/readout", {"prompt": PROMPT, "token": "w1 w2"}, 400, "2 tokens"),
        ("/api/readout", {"lenses": ["logit"]}, 422, "prompt"),
        ("/api/compare", {"prompt": PROMPT, "other": "w1 w2"}, 400, "same number of tokens"),
    ],
)
def test_bad_requests_are_json_errors(client, path, body, status, message):
    response = client.post(path, json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_malformed_json_and_oversized_bodies(client):
    response = client.post(
        "/api/readout", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    response = client.post(
        "/api/readout", content=b"x" * (65 * 1024), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "larger than 64 KiB" in response.json()["error"]


def test_a_chunked_body_is_limited_too(client, session, monkeypatch):
    calls = []
    monkeypatch.setattr(session, "read", lambda *args: calls.append(args))

    def oversized():  # 20 MiB with no Content-Length: httpx sends it chunked
        for _ in range(320):
            yield b"x" * 65536

    response = client.post(
        "/api/readout", content=oversized(), headers={"content-type": "application/json"}
    )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and "larger than 64 KiB" in response.json()["error"]
    assert calls == []  # never parsed nor tokenised

    def small():
        yield b'{"prompt": '
        yield json.dumps(PROMPT).encode()
        yield b"}"

    monkeypatch.undo()
    response = client.post(
        "/api/readout", content=small(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200 and response.json()["positions"] == list(range(5))


def test_the_body_limit_stops_reading_at_the_limit():
    """Driven as ASGI with an endless body: reading stops just past the limit."""
    import asyncio

    from starlette.responses import JSONResponse

    from tunedlens.serve.app import BODY_LIMIT, BodyLimit

    reads, sent = [], []

    async def receive():
        reads.append(4096)
        return {"type": "http.request", "body": b"x" * 4096, "more_body": True}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        raise AssertionError("an oversized body was handed on")

    limited = BodyLimit(app, refuse=lambda: JSONResponse({"error": "too large"}, status_code=413))
    scope = {"type": "http", "method": "POST", "path": "/api/readout", "headers": []}
    asyncio.run(limited(scope, receive, send))
    assert sum(reads) == BODY_LIMIT + 4096
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413


def test_requests_wait_in_line_and_a_full_line_is_refused(client, session):
    session.queue = 1
    release = threading.Event()
    started = threading.Event()

    def hold():
        with session.turn():
            started.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    started.wait(10)
    assert client.get("/api/health").json()["status"] == "busy"
    waiting = threading.Thread(target=lambda: client.post("/api/readout", json={"prompt": PROMPT}))
    waiting.start()
    for _ in range(200):  # until the second request is in line
        if session._waiting == 2:
            break
        threading.Event().wait(0.01)
    response = client.post("/api/readout", json={"prompt": PROMPT})
    assert response.status_code == 429 and "busy" in response.json()["error"]
    release.set()
    holder.join()
    waiting.join()
    assert client.get("/api/health").json()["status"] == "ok"


def test_start_up_refuses_a_lens_of_another_model(tiny_model_dir, tmp_path):
    from tunedlens.commands.serve import build_session
    from tunedlens.serve.run import check_host

    random_lens(tiny_model("gpt2")).save(tmp_path / "gpt2-lens")
    with pytest.raises(LensMismatch, match="fingerprint"):
        build_session(str(tiny_model_dir), [str(tmp_path / "gpt2-lens")])
    with pytest.raises(Exception, match="--allow-remote"):
        check_host("0.0.0.0", allow_remote=False)
    with pytest.warns(UserWarning, match="anyone who can reach"):
        check_host("0.0.0.0", allow_remote=True)


def test_eval_reports_are_matched_by_lens_name(tiny_model_dir, tmp_path):
    import json

    from tunedlens.commands.serve import build_session

    random_lens(tiny_model("llama")).save(tmp_path / "mine")
    report = tmp_path / "report"
    report.mkdir()
    (report / "metrics.json").write_text(
        json.dumps(
            {
                "layers": [0, 1, 2],
                "lenses": {"mine": {"kl_bits": [3.0, 1.0, 0.0]}, "other": {}},
                "gates": {"mine": {"A": {"pass": True}}},
            }
        )
    )
    session = build_session(str(tiny_model_dir), [str(tmp_path / "mine")], [str(report)])
    assert set(session.evals) == {"mine"}
    assert session.describe()["lenses"][1]["eval"]["gates"] == {"A": {"pass": True}}


def test_a_bug_inside_a_request_is_a_server_error_not_a_bad_request(session, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(session, "read", broken)
    client = TestClient(create_app(session), raise_server_exceptions=False)
    response = client.post("/api/readout", json={"prompt": PROMPT})
    assert response.status_code == 500
    bad = client.post("/api/cell", json={"prompt": PROMPT, "row": "9", "position": 0})
    assert bad.status_code == 400  # the request's own mistake
