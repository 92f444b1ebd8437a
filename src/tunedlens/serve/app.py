"""The web explorer's FastAPI application: one page, its static files, and a JSON API.

``/api/health``, ``/api/lenses``, ``/api/readout``, ``/api/cell`` and ``/api/compare``; every
error is ``{"error": "..."}`` with a 4xx status (429 when the model is busy with a full queue,
413 for an oversized body). The page and its scripts are served from the package: no network.
The OpenAPI schema is at ``/openapi.json`` and browsable at ``/docs``.
"""

# No `from __future__ import annotations`: FastAPI reads the request models defined inside
# create_app from the endpoints' annotations, which must be real classes, not strings.
from importlib.resources import files
from typing import Optional

from tunedlens.errors import TunedLensError, require
from tunedlens.serialize import dumps
from tunedlens.serve.session import BadRequest, Busy, ServeSession

BODY_LIMIT = 64 * 1024
"""Largest request body accepted, bytes."""
STATIC = files("tunedlens.serve") / "static"


def create_app(session: ServeSession):
    """The FastAPI application serving ``session``."""
    fastapi = require("fastapi", "serve")
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException

    app = FastAPI(
        title="tunedlens explorer",
        version=_version(),
        description="Exact readouts of a model's layers through lenses.",
    )

    class ReadoutRequest(BaseModel):
        prompt: str = Field(description="The text to read.")
        lenses: list[str] = Field(default=["logit"], description="One or two lens names.")
        stat: str = Field(
            default="entropy",
            description="Any statistic of tunedlens.STATS: entropy, kl, ce, max-prob, rank, "
            "prob, model-rank or cos.",
        )
        stride: int = Field(default=1, description="Every N-th layer (the last is kept).")
        window: Optional[int] = Field(default=None, description="Show the last N positions.")
        token: Optional[str] = Field(default=None, description="A token for rank/probability.")

    class CellRequest(BaseModel):
        prompt: str
        lens: str = "logit"
        row: str = Field(description="The row's label: a layer index, or 'output'.")
        position: int = Field(description="Position in the prompt, 0-based.")

    class CompareRequest(BaseModel):
        prompt: str
        other: str = Field(description="A second prompt of the same token length.")
        lens: str = "logit"
        stride: int = 1

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    too_large = f"the request body is larger than {BODY_LIMIT // 1024} KiB"
    app.add_middleware(BodyLimit, refuse=lambda: error(413, too_large))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return error(400, "the request body is not valid JSON")
        first = problems[0] if problems else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(BadRequest)
    async def bad(_request, exc: BadRequest):
        return error(400, str(exc))

    @app.exception_handler(TunedLensError)
    async def bad_value(_request, exc: TunedLensError):
        # A check of what the request asked for; anything else is a bug, answered 500 by the
        # server with its traceback in the log.
        return error(400, str(exc))

    @app.exception_handler(Busy)
    async def busy(_request, exc: Busy):
        return error(429, str(exc))

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        types = {".js": "text/javascript", ".css": "text/css"}
        suffix = name[name.rfind(".") :] if "." in name else ""
        if "/" in name or suffix not in types or not (STATIC / name).is_file():
            return error(404, f"no static file {name!r}")
        return Response((STATIC / name).read_text(encoding="utf-8"), media_type=types[suffix])

    @app.get("/api/health")
    def health() -> dict:
        """``ok``, or ``busy`` while a request is being computed."""
        return {"status": "busy" if session.busy else "ok", "model": session.model_name}

    @app.get("/api/lenses")
    def lenses() -> dict:
        """The model, its lenses (kind, source, evaluation), the statistics and the limits."""
        return session.describe()

    def plain(payload: dict) -> Response:
        # Already JSON-safe plain data: skip FastAPI's per-item encoder (~0.2 s on a readout).
        return Response(dumps(payload), media_type="application/json")

    @app.post("/api/readout")
    def read(request: ReadoutRequest):
        """Per lens, row and position: the statistic and the top-1 token with its probability."""
        return plain(
            session.read(
                request.prompt,
                request.lenses,
                request.stat,
                request.stride,
                request.window,
                request.token,
            )
        )

    @app.post("/api/cell")
    def cell(request: CellRequest) -> dict:
        """One cell's top-10, and its top token's probability across every layer."""
        return session.cell(request.prompt, request.lens, request.row, request.position)

    @app.post("/api/compare")
    def compare(request: CompareRequest):
        """Jensen–Shannon divergence per cell between two prompts of equal token length."""
        return plain(session.compare(request.prompt, request.other, request.lens, request.stride))

    del fastapi
    return app


class BodyLimit:
    """ASGI middleware: read each request's body up to ``limit`` bytes, answer ``refuse()`` beyond.

    A ``Content-Length`` over the limit is refused unread; a body without one (chunked transfer)
    is counted as it arrives and refused as soon as it passes the limit, so an oversized body is
    never held in memory whole nor handed on to be parsed and tokenised. The body read is then
    replayed to the application.
    """

    def __init__(self, app, refuse, limit: int = BODY_LIMIT):
        self.app, self.refuse, self.limit = app, refuse, limit

    async def __call__(self, scope, receive, send):
        """Handle one ASGI connection (HTTP ones are limited; others pass through)."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self.refuse()(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away mid-body
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self.refuse()(scope, receive, send)
            if not message.get("more_body", False):
                break
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tunedlens")
    except PackageNotFoundError:
        return "unknown"
