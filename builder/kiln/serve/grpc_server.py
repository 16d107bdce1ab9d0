"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), beside REST in
the same process and event loop: the same batcher, metrics and readiness. Inputs come as
`raw_input_contents` (used without a copy) or typed `contents`; outputs go back as
`raw_output_contents`, as Triton's and KServe's clients expect."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from pydantic import ValidationError

from kiln.api.version import VERSION
from kiln.serve.batching import Batcher
from kiln.serve.drain import Draining
from kiln.serve.grpc_protocol import compiled
from kiln.serve.metrics import Metrics
from kiln.serve.protocol import (
    EXTENSIONS,
    BadRequestError,
    InferRequest,
    datatype_of,
    decode,
    malformed,
    requested_outputs,
    tensor_metadata,
)
from kiln.serve.served import EngineFailedError, ModelInfo, run_engine

# Typed `contents` fields by datatype (FP16 has none: it must come as raw bytes).
_CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT64": "int64_contents",
    "INT32": "int_contents",
    "UINT8": "uint_contents",
    "BOOL": "bool_contents",
}


def as_request(message: Any) -> tuple[InferRequest, dict[str, memoryview] | None]:
    """The gRPC request as the protocol module's request, plus its raw inputs by name."""
    raw_count = len(message.raw_input_contents)
    if raw_count and raw_count != len(message.inputs):
        raise BadRequestError(
            f"{raw_count} raw_input_contents for {len(message.inputs)} inputs (one each expected)"
        )
    tensors = []
    for tensor in message.inputs:
        field = _CONTENTS.get(tensor.datatype)
        values = list(getattr(tensor.contents, field)) if field and not raw_count else None
        tensors.append(
            {
                "name": tensor.name,
                "shape": list(tensor.shape),
                "datatype": tensor.datatype,
                "data": values,
            }
        )
    outputs = [{"name": o.name} for o in message.outputs] or None
    try:
        request = InferRequest.model_validate(
            {"id": message.id or None, "inputs": tensors, "outputs": outputs}
        )
    except ValidationError as exc:  # an empty request, say
        raise BadRequestError(malformed(exc, "request")) from None
    raw = None
    if raw_count:
        raw = {
            t.name: memoryview(message.raw_input_contents[i]) for i, t in enumerate(message.inputs)
        }
    return request, raw


def servicer(
    info: ModelInfo, batcher: Batcher, metrics: Metrics, draining: Draining | None = None
) -> Any:
    pb, stubs = compiled()
    stopping = draining or Draining()

    async def known(name: str, context: Any) -> None:
        if name != info.name:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown model {name!r}; this server serves {info.name!r}",
            )

    def metadata(entry: dict[str, Any]) -> Any:
        return pb.ModelMetadataResponse.TensorMetadata(
            name=entry["name"], datatype=entry["datatype"], shape=entry["shape"]
        )

    class Servicer(stubs.GRPCInferenceServiceServicer):  # type: ignore[misc, name-defined]
        async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            # Listening only after the warm-up; not ready once draining (kiln.serve.drain).
            return pb.ServerReadyResponse(ready=not stopping.active)

        async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            await known(request.name, context)
            return pb.ModelReadyResponse(ready=not stopping.active)

        async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerMetadataResponse(name="kiln", version=VERSION, extensions=EXTENSIONS)

        async def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802
            if request.name:
                await known(request.name, context)
            stats = metrics.stats.model_stats(info.name, info.version)
            # The JSON form's keys are the message's field names.
            return pb.ModelStatisticsResponse(model_stats=[pb.ModelStatistics(**stats)])

        async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            await known(request.name, context)
            return pb.ModelMetadataResponse(
                name=info.name,
                versions=[info.version],
                platform=info.platform,
                inputs=[metadata(tensor_metadata(t)) for t in info.inputs],
                outputs=[metadata(o) for o in info.outputs_metadata()],
            )

        async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
            started = time.perf_counter_ns()
            await known(request.model_name, context)
            ok = False
            try:
                response = await infer(pb, info, batcher, metrics, request, context)
                ok = True
            finally:
                metrics.stats.finished(time.perf_counter_ns() - started, ok)
            metrics.latency.observe((time.perf_counter_ns() - started) / 1e9)
            return response

    return stubs, Servicer()


async def infer(
    pb: Any, info: ModelInfo, batcher: Batcher, metrics: Metrics, request: Any, context: Any
) -> Any:
    try:
        parsed, raw = as_request(request)
        feeds = decode(parsed, info.inputs, info.max_batch, raw)
        wanted = requested_outputs(parsed, info.outputs)
    except BadRequestError as exc:
        metrics.errors.labels(kind="bad_input").inc()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    try:
        outputs = await run_engine(info, batcher, metrics, feeds, wanted)
    except EngineFailedError as exc:
        metrics.errors.labels(kind="runtime").inc()
        await context.abort(grpc.StatusCode.INTERNAL, str(exc))
    tensors, contents = [], []
    for name, output in outputs:
        array = np.asarray(output, order="C")
        tensors.append(
            pb.ModelInferResponse.InferOutputTensor(
                name=name, datatype=datatype_of(array), shape=list(array.shape)
            )
        )
        contents.append(array.tobytes())
    return pb.ModelInferResponse(
        model_name=info.name,
        model_version=info.version,
        id=request.id,
        outputs=tensors,
        raw_output_contents=contents,
    )


def grpc_server(
    info: ModelInfo,
    batcher: Batcher,
    metrics: Metrics,
    address: str,
    max_bytes: int,
    draining: Draining | None = None,
) -> Any:
    """A grpc.aio server on `address`, not started (the app's lifespan starts and stops it)."""
    options = [
        ("grpc.max_receive_message_length", max_bytes),
        ("grpc.max_send_message_length", max_bytes),
    ]
    server = grpc.aio.server(options=options, interceptors=[_Answers(metrics)])
    stubs, service = servicer(info, batcher, metrics, draining)
    stubs.add_GRPCInferenceServiceServicer_to_server(service, server)
    server.add_insecure_port(address)
    return server


log = logging.getLogger(__name__)
_Handler = Callable[[Any, Any], Awaitable[Any]]


class _Answers(grpc.aio.ServerInterceptor):
    """Counts every RPC's answer by its status (`kiln_requests_total{protocol="grpc"}`), an
    unknown method's UNIMPLEMENTED included, and turns an exception no handler expected into
    INTERNAL naming only its type, never UNKNOWN with the internals' text."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def count(self, code: grpc.StatusCode) -> None:
        self.metrics.requests.labels(protocol="grpc", code=code.name).inc()

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:  # no such method: grpc answers UNIMPLEMENTED
            self.count(grpc.StatusCode.UNIMPLEMENTED)
            return None
        if handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self.answered(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def answered(self, inner: _Handler) -> _Handler:
        async def call(request: Any, context: Any) -> Any:
            try:
                response = await inner(request, context)
            except grpc.aio.AbortError:
                self.count(context.code() or grpc.StatusCode.UNKNOWN)
                raise
            except Exception as exc:
                log.exception("gRPC handler failed")  # a bug: the traceback goes to the log
                self.count(grpc.StatusCode.INTERNAL)
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})"
                )
            self.count(context.code() or grpc.StatusCode.OK)
            return response

        return call
