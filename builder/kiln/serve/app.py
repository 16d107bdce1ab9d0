"""The HTTP face of `kiln serve`: Open Inference Protocol (KServe v2) REST on FastAPI, plus
Prometheus metrics. Endpoints only translate; batching and checks live in their own modules."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.api.version import VERSION
from kiln.serve.batching import Batcher, Infer
from kiln.serve.body import RAW_BODY
from kiln.serve.drain import Draining
from kiln.serve.metrics import Metrics
from kiln.serve.protocol import (
    EXTENSIONS,
    HEADER_LENGTH,
    BadRequestError,
    InferRequest,
    InferResponse,
    ResponseTensor,
    binary_inputs,
    decode,
    encode,
    encode_binary,
    malformed,
    requested_outputs,
    split_body,
    tensor_metadata,
    wants_binary,
)
from kiln.serve.served import EngineFailedError, ModelInfo, run_engine

__all__ = ["ModelInfo", "create_app", "respond"]


def respond(info: ModelInfo, request: InferRequest, outputs: list[tuple[str, Any]]) -> Response:
    """JSON tensors, or, for outputs asked for as binary, a JSON header followed by their raw
    bytes in order (Inference-Header-Content-Length says where the header ends)."""
    tensors: list[ResponseTensor] = []
    chunks: list[memoryview] = []
    for name, array in outputs:
        if wants_binary(request, name):
            tensor, data = encode_binary(name, array)
            tensors.append(tensor)
            chunks.append(data)
        else:
            tensors.append(encode(name, array))
    response = InferResponse(
        model_name=info.name, model_version=info.version, id=request.id, outputs=tensors
    )
    header = response.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *chunks]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def create_app(
    info: ModelInfo,
    infer: Infer,
    window_ms: float,
    max_body_bytes: int = 64 << 20,
    grpc_address: str | None = None,
    executor: concurrent.futures.ThreadPoolExecutor | None = None,
    draining: Draining | None = None,
) -> FastAPI:
    """REST on the app; with `grpc_address`, gRPC beside it on the same batcher and metrics.
    `executor`: the thread the runner was loaded on (see Batcher). `draining`: once set, the
    readiness endpoints answer 503 while requests are still served (kiln.serve.drain)."""
    stopping = draining or Draining()
    metrics = Metrics()
    batcher = Batcher(infer, info.max_batch, window_ms / 1000.0, executor, info.merges)
    batcher.on_batch = metrics.executed

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        rpc = None
        if grpc_address is not None:
            from kiln.serve.grpc_server import grpc_server

            rpc = grpc_server(info, batcher, metrics, grpc_address, max_body_bytes, stopping)
            await rpc.start()
        yield
        if rpc is not None:
            await rpc.stop(grace=1.0)
        await batcher.stop()

    app = FastAPI(
        title=f"kiln serve: {info.name}", lifespan=lifespan, docs_url=None, redoc_url=None
    )

    def error(status: int, message: str, kind: str) -> JSONResponse:
        metrics.errors.labels(kind=kind).inc()
        return JSONResponse({"error": message}, status_code=status)

    _protocol_errors(app)
    app.add_middleware(_CountAnswers, metrics=metrics)

    def unknown(name: str) -> JSONResponse | None:
        if name != info.name:
            return JSONResponse(
                {"error": f"unknown model {name!r}; this server serves {info.name!r}"}, 404
            )
        return None

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Any:
        # The server only listens once the engine has run its warm-up inference.
        if stopping.active:
            return JSONResponse({"ready": False, "error": DRAINING}, status_code=503)
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "kiln", "version": VERSION, "extensions": EXTENSIONS}

    @app.get("/v2/models/stats")
    @app.get("/v2/models/{name}/stats")
    async def model_statistics(name: str | None = None) -> Any:
        if name is not None and (missing := unknown(name)) is not None:
            return missing
        return {"model_stats": [metrics.stats.model_stats(info.name, info.version)]}

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> Any:
        if (missing := unknown(name)) is not None:
            return missing
        answer: dict[str, Any] = {
            "name": info.name,
            "versions": [info.version],
            "platform": info.platform,
            "inputs": [tensor_metadata(t) for t in info.inputs],
            "outputs": info.outputs_metadata(),
        }
        if info.constants:  # what the engine is always called with, which no request sends
            answer["parameters"] = {"constants": info.constants}
        return answer

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> Any:
        if (missing := unknown(name)) is not None:
            return missing
        if stopping.active:
            return JSONResponse(
                {"name": info.name, "ready": False, "error": DRAINING}, status_code=503
            )
        return {"name": info.name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    async def infer_endpoint(name: str, request: Request) -> Any:
        started = time.perf_counter()
        if (missing := unknown(name)) is not None:
            return missing
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_body_bytes:
            return error(
                413, f"request body of {declared} bytes exceeds {max_body_bytes}", "too_large"
            )
        # A large body the server read into one buffer (kiln.serve.body) comes beside an
        # empty ASGI body; any other, from this or another ASGI server, as the ASGI body.
        asgi_body = await request.body()  # also waits for a buffered body to be whole
        raw = request.scope.get("extensions", {}).get(RAW_BODY)
        body = memoryview(raw) if raw is not None else asgi_body
        if len(body) > max_body_bytes:
            return error(413, f"request body exceeds {max_body_bytes} bytes", "too_large")
        received = time.perf_counter_ns()  # the server's own time starts with a whole body
        answer = await _infer(body, request.headers.get(HEADER_LENGTH))
        metrics.stats.finished(time.perf_counter_ns() - received, answer.status_code == 200)
        if answer.status_code == 200:
            metrics.latency.observe(time.perf_counter() - started)
        return answer

    async def _infer(body: bytes | memoryview, header_length: str | None) -> Response:
        try:
            header, binary = split_body(body, header_length)
            parsed = InferRequest.model_validate_json(header)
        except BadRequestError as exc:
            return error(400, str(exc), "malformed")
        except ValidationError as exc:
            return error(400, malformed(exc, "body"), "malformed")
        try:
            feeds = decode(parsed, info.inputs, info.max_batch, binary_inputs(parsed, binary))
        except BadRequestError as exc:
            return error(400, str(exc), "bad_input")
        try:
            wanted = requested_outputs(parsed, info.outputs)
        except BadRequestError as exc:
            return error(400, str(exc), "bad_output")
        try:
            outputs = await run_engine(info, batcher, metrics, feeds, wanted)
        except EngineFailedError as exc:
            return error(500, str(exc), "runtime")
        return respond(info, parsed, outputs)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


DRAINING = "the server is draining: it answers the requests it has, and takes no new ones"


def _protocol_errors(app: FastAPI) -> None:
    """The framework's own refusals (an unknown route's 404, a wrong method's 405, a request
    it cannot bind) in the protocol's error form, `{"error": "..."}`, which clients read
    (perf_analyzer reads `error` and fails on any other body); a binding failure is a 400,
    as every bad request of the protocol is; a crash is a 500 in the same form."""

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    async def unbound(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        return JSONResponse({"error": f"bad request: {where}: {first.get('msg', '')}"}, 400)

    async def crashed(_: Request, exc: Exception) -> Response:
        # A bug, not the client's fault: its type only (the traceback goes to the log).
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, 500)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, unbound)
    app.add_exception_handler(Exception, crashed)


class _CountAnswers:
    """Counts every answer under /v2 by status code, whatever produced it (an endpoint, the
    framework's 404 or 405, a crash's 500), as `kiln_requests_total{protocol="rest"}`. Pure
    ASGI, so a streamed or large answer passes through untouched."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v2"):
            await self.app(scope, receive, send)
            return
        answered = False

        async def counted(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                self.metrics.requests.labels(protocol="rest", code=str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except Exception:
            if not answered:  # the server's own error answer, sent after this middleware
                self.metrics.requests.labels(protocol="rest", code="500").inc()
            raise
