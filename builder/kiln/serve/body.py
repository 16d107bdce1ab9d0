"""Large request bodies read by the kernel straight into one buffer, handed to the app as is.

uvicorn's HTTP protocol copies a body four times on its way to a handler: the event loop makes
a bytes object of each read, the HTTP parser another of each body fragment, the request cycle
appends them to a bytearray, and `receive()` makes one bytes object of that. For a 2.5 MB
tensor body that cost 1.1-1.3 ms per request on the project's CPU machine, a sixth of the
lipsync engine's own time (a trivial app before and after, same client and bytes: README's
serving section).

So a buffered protocol wraps a subclass of uvicorn's: once a request's headers say it has a
body of known length, at least RAW_FROM bytes and at most the server's limit, it allocates that
buffer and lets the event loop read into it, bypassing the parser for the body. The app gets
the buffer, not a copy, in `scope["extensions"][RAW_BODY]`, and reads an empty ASGI body with
`more_body` false once it is whole (kiln.serve.app reads both).

The buffer is left uninitialised (numpy's `empty`, not a zero-filled bytearray): its pages are
committed only as the body's bytes land in them, so a client that declares a large body and
sends little of it costs the server no more memory than uvicorn's own path would. Every other
read lands in one scratch buffer per event loop, as uvloop's own reads do, never one per
connection: its bytes are copied out before the loop serves another connection, and a
zero-filled buffer per connection would commit its size for every idle client.

Every other request (small, chunked, over the limit, pipelined behind another) goes through
uvicorn's own path unchanged, and every header, `Expect: 100-continue`, keep-alive and
disconnect rule stays uvicorn's. After a buffered body the parser, which never saw it, is
replaced by a fresh one made as uvicorn makes it; reads never run past the body, so the next
request's bytes reach the fresh parser.

This leans on uvicorn's protocol internals (its parser callbacks, `cycle`, `pipeline`);
tests/integration/test_serve_body.py drives each path over real sockets."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httptools
import numpy as np
import numpy.typing as npt
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

RAW_BODY = "kiln.raw_body"  # the ASGI scope extension that carries a whole body
RAW_FROM = 1 << 16  # smaller bodies arrive in one or two reads: uvicorn's copies cost nothing
SCRATCH = 1 << 18  # one read of headers (and of small bodies), as uvloop's own buffer
_LOOP_LOCAL = threading.local()  # an event loop runs on one thread: its scratch buffer


def scratch() -> memoryview:
    """This thread's (so this event loop's) scratch buffer, made on first use."""
    buffer: memoryview | None = getattr(_LOOP_LOCAL, "scratch", None)
    if buffer is None:
        buffer = _LOOP_LOCAL.scratch = memoryview(bytearray(SCRATCH))
    return buffer


def fresh_parser(protocol: HttpToolsProtocol) -> httptools.HttpRequestParser:
    """A parser made as uvicorn makes its own (HttpToolsProtocol.__init__)."""
    parser = httptools.HttpRequestParser(protocol)
    parser.set_dangerous_leniencies(lenient_data_after_close=True)  # httptools >= 0.6.3
    return parser


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The body's declared length, or None where it is not one plain length (chunked, absent,
    malformed: uvicorn's own path handles and refuses those)."""
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            if length is not None or not value.strip().isdigit():
                return None
            length = int(value)
    return length


def raw_body_protocol(max_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol, reading bodies of RAW_FROM to `max_bytes` bytes into one
    buffer; larger ones take uvicorn's path, where the app refuses them (413) unread."""

    class RawBodyHttp(HttpToolsProtocol):
        """uvicorn's protocol, taking over a large body's bytes from its parser."""

        raw: npt.NDArray[np.uint8] | None = None
        view: memoryview
        filled = 0

        def on_headers_complete(self) -> None:
            before = self.cycle
            super().on_headers_complete()
            started = self.cycle is not before and not self.pipeline  # not queued, not upgraded
            length = content_length(self.headers)
            if started and length is not None and RAW_FROM <= length <= max_bytes:
                self.raw = np.empty(length, np.uint8)  # uninitialised: see the module
                self.view = self.raw.data
                self.filled = 0

        def on_body(self, body: bytes) -> None:
            if self.raw is None:
                super().on_body(body)
                return
            # The part of the body that came in the same read as the headers.
            self.view[self.filled : self.filled + len(body)] = body
            self.filled += len(body)

        def on_message_complete(self) -> None:
            if self.raw is None:
                super().on_message_complete()
                return
            self.deliver()  # the whole body came with the headers' read

        def raw_updated(self, nbytes: int) -> None:
            """`nbytes` more of the body were read into `view` (RawBodyReader)."""
            self._unset_keepalive_if_required()  # as data_received does for every read
            self.filled += nbytes
            if self.raw is not None and self.filled == len(self.raw):
                self.parser = fresh_parser(self)  # it stopped mid-body; it never sees the rest
                self.deliver()

        def deliver(self) -> None:
            cycle, raw = self.cycle, self.raw
            self.raw = None
            extensions: dict[str, Any] = cycle.scope.setdefault("extensions", {})
            extensions[RAW_BODY] = raw
            cycle.more_body = False
            cycle.message_event.set()

    class RawBodyReader(asyncio.BufferedProtocol):
        """What the event loop talks to. uvloop only reads into a protocol's own buffer when
        the protocol is not an `asyncio.Protocol`, which uvicorn's is; so this reader is the
        buffered protocol, and hands uvicorn's protocol the headers as data it parses and the
        body as bytes already in place."""

        def __init__(self, **uvicorn_arguments: Any) -> None:
            self.http = RawBodyHttp(**uvicorn_arguments)
            # Shared with the loop's other connections: a read is copied out (buffer_updated)
            # before the loop calls get_buffer for any other.
            self.scratch = scratch()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.http.connection_made(transport)  # type: ignore[arg-type]

        def connection_lost(self, exc: Exception | None) -> None:
            self.http.raw = None
            self.http.connection_lost(exc)

        def eof_received(self) -> None:
            self.http.eof_received()

        def pause_writing(self) -> None:
            self.http.pause_writing()

        def resume_writing(self) -> None:
            self.http.resume_writing()

        def get_buffer(self, sizehint: int) -> memoryview:
            if self.http.raw is not None:
                return self.http.view[self.http.filled :]  # exactly the rest of this body
            return self.scratch

        def buffer_updated(self, nbytes: int) -> None:
            if self.http.raw is not None:
                self.http.raw_updated(nbytes)
            else:  # one copy, as the event loop itself makes for a plain protocol
                self.http.data_received(bytes(self.scratch[:nbytes]))

    return RawBodyReader  # type: ignore[return-value]  # uvicorn types it as a plain protocol
