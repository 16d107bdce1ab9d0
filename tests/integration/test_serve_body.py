"""kiln.serve.body on a real uvicorn server and real sockets: a large body read into one buffer
must reach the app whole and unchanged however its bytes arrive, and every request it does
not take (small, chunked, over the limit, pipelined) must still get uvicorn's own handling.
The app answers with the body's digest and the path that delivered it, so a body cut, joined
to the next request, or delivered twice shows."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from kiln.serve.body import RAW_BODY, RAW_FROM, raw_body_protocol
from tests.conftest import free_port
from tests.integration.test_serve_load import rss_mib

pytestmark = pytest.mark.integration

LIMIT = 4 << 20
REPO = Path(__file__).parents[2]
STARTED = [0]  # requests the app has begun to answer (their buffers made): GET /started


async def answer_json(send: Any, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def digest_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body as any ASGI app does, then answers what it got and how."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            done = message["type"] == "lifespan.shutdown"
            await send(
                {"type": "lifespan.shutdown.complete" if done else "lifespan.startup.complete"}
            )
            if done:
                return
    if scope["path"] == "/started":
        await answer_json(send, {"started": STARTED[0]})
        return
    STARTED[0] += 1
    if scope["path"] == "/early":  # answers without reading the body, as a 404 or 413 does
        await send(
            {"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]}
        )
        await send({"type": "http.response.body", "body": b""})
        return
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    raw = scope.get("extensions", {}).get(RAW_BODY)
    asgi = b"".join(chunks)
    body = raw if raw is not None else asgi
    await answer_json(
        send,
        {
            "sha": hashlib.sha256(body).hexdigest(),
            "length": len(body),
            "raw": raw is not None,
            "asgi_length": len(asgi),
        },
    )


LOOPS = ["uvloop", "asyncio"]  # every event loop uvicorn offers: both read into the buffer


def server_config(port: int, loop: str) -> uvicorn.Config:
    return uvicorn.Config(
        digest_app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        http=raw_body_protocol(LIMIT),
        lifespan="on",
        loop=loop,
    )


def serve(port: int, loop: str) -> None:
    """The digest app in a process of its own (python -c), for memory figures."""
    uvicorn.Server(server_config(port, loop)).run()


@pytest.fixture(scope="module", params=LOOPS)
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A server on a thread of this process."""
    chosen = free_port()
    server = uvicorn.Server(server_config(chosen, request.param))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield chosen
    server.should_exit = True
    thread.join(timeout=10)


def body_of(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def request(body: bytes, extra: str = "") -> bytes:
    head = f"POST /v2/models/m/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


def read_response(sock: socket.socket, buffered: bytearray) -> tuple[int, dict[str, Any]]:
    """One response off a keep-alive connection; `buffered` keeps bytes read past it."""
    while b"\r\n\r\n" not in buffered:
        buffered += sock.recv(65536)
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    status = int(head.split()[1])
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    buffered[:] = rest[length:]
    return status, json.loads(rest[:length]) if status == 200 else {}


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def expect(answer: dict[str, Any], body: bytes, raw: bool) -> None:
    assert answer["sha"] == hashlib.sha256(body).hexdigest()
    assert answer["length"] == len(body)
    assert answer["raw"] is raw
    if raw:
        assert answer["asgi_length"] == 0  # the body comes once, not also as ASGI chunks


def test_large_body_in_one_write_then_the_next_on_the_same_connection(port: int) -> None:
    """A raw body, then a small one and another raw one: the fresh parser reads each."""
    bodies = [body_of(3 << 20, 1), body_of(100, 2), body_of(RAW_FROM, 3), body_of(RAW_FROM - 1, 4)]
    with connect(port) as sock:
        buffered = bytearray()
        for body in bodies:
            sock.sendall(request(body))
            status, answer = read_response(sock, buffered)
            assert status == 200
            expect(answer, body, raw=len(body) >= RAW_FROM)


def test_body_dribbled_in_pieces_and_split_with_its_headers(port: int) -> None:
    """Headers with the body's first bytes in one write, the rest in small slow pieces."""
    body = body_of(300_000, 5)
    data = request(body)
    with connect(port) as sock:
        sock.sendall(data[: data.index(b"\r\n\r\n") + 4 + 1000])
        rest = data[data.index(b"\r\n\r\n") + 4 + 1000 :]
        for start in range(0, len(rest), 70_000):
            time.sleep(0.05)
            sock.sendall(rest[start : start + 70_000])
        status, answer = read_response(sock, bytearray())
    assert status == 200
    expect(answer, body, raw=True)


def test_pipelined_requests_each_get_their_own_body(port: int) -> None:
    """Three requests in one write: the second and third queue behind the first (uvicorn's
    path), and no body runs into the next request."""
    bodies = [body_of(200_000, 6), body_of(150_000, 7), body_of(10, 8)]
    with connect(port) as sock:
        sock.sendall(b"".join(request(body) for body in bodies))
        buffered = bytearray()
        answers = [read_response(sock, buffered) for _ in bodies]
    for (status, answer), body in zip(answers, bodies, strict=True):
        assert status == 200
        assert answer["sha"] == hashlib.sha256(body).hexdigest()


def test_expect_continue_waits_for_the_app(port: int) -> None:
    body = body_of(500_000, 9)
    data = request(body, "Expect: 100-continue\r\n")
    split = data.index(b"\r\n\r\n") + 4
    with connect(port) as sock:
        sock.sendall(data[:split])
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(data[split:])
        status, answer = read_response(sock, bytearray())
    assert status == 200
    expect(answer, body, raw=True)


def test_an_answer_before_the_body_then_the_next_request(port: int) -> None:
    """The app answers before the body is read (a 404 does): the rest of the body still
    arrives and is dropped, and the next request on the connection is read as its own."""
    early = body_of(400_000, 13)
    data = request(early).replace(b"/v2/models/m/infer", b"/early")
    split = data.index(b"\r\n\r\n") + 4 + 100
    after = body_of(200_000, 14)
    with connect(port) as sock:
        sock.sendall(data[:split])
        buffered = bytearray()
        while b"\r\n\r\n" not in buffered:
            buffered += sock.recv(65536)
        assert buffered.startswith(b"HTTP/1.1 404")
        buffered.clear()
        sock.sendall(data[split:] + request(after))
        status, answer = read_response(sock, buffered)
    assert status == 200
    expect(answer, after, raw=True)


def test_chunked_and_oversized_bodies_take_uvicorns_path(port: int) -> None:
    body = body_of(200_000, 10)
    chunked = (
        b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(body)
        + body
        + b"\r\n0\r\n\r\n"
    )
    big = body_of(LIMIT + 1, 11)
    with connect(port) as sock:
        buffered = bytearray()
        sock.sendall(chunked)
        status, answer = read_response(sock, buffered)
        assert status == 200
        expect(answer, body, raw=False)
        sock.sendall(request(big))
        status, answer = read_response(sock, buffered)
        assert status == 200
        expect(answer, big, raw=False)  # over the limit: never allocated up front


def test_a_client_gone_mid_body_leaves_the_server_serving(port: int) -> None:
    body = body_of(1 << 20, 12)
    with connect(port) as sock:
        sock.sendall(request(body)[:300_000])
    time.sleep(0.2)
    with connect(port) as sock:
        sock.sendall(request(body))
        status, answer = read_response(sock, bytearray())
    assert status == 200
    expect(answer, body, raw=True)


def started(port: int) -> int:
    count: int = httpx.get(f"http://127.0.0.1:{port}/started", timeout=30).json()["started"]
    return count


def wait_for(server: subprocess.Popen[bytes], check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, f"the server exited ({server.returncode})"
        try:
            if check():
                return
        except httpx.TransportError:
            pass  # not listening yet
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize("loop", LOOPS)
def test_declared_but_unsent_bodies_commit_no_memory(loop: str) -> None:
    """40 clients each declare a body at the limit and send one byte of it: the buffers are
    allocated but not committed, as uvicorn's own path commits only what arrives, and the
    connections share one scratch buffer.

    What is measured is what the code commits: the anonymous memory (RssAnon) of a server in a
    process of its own, once all 40 requests have started. Not VmRSS, which counts library
    pages the kernel pages out and in again under memory pressure, and not a process that ran
    other tests, whose allocator holds memory they freed."""
    chosen = free_port()
    script = f"from tests.integration.test_serve_body import serve; serve({chosen}, {loop!r})"
    server = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    sockets: list[socket.socket] = []
    try:
        wait_for(server, lambda: started(chosen) == 0, "the server")
        before = rss_mib(server.pid, "RssAnon")
        head = request(b"").replace(b"Content-Length: 0", b"Content-Length: %d" % LIMIT)
        for _ in range(40):
            sockets.append(connect(chosen))
            sockets[-1].sendall(head + b"x")
        wait_for(server, lambda: started(chosen) == 40, "every request to start")
        grown = rss_mib(server.pid, "RssAnon") - before
    finally:
        for sock in sockets:
            sock.close()
        server.terminate()
        server.wait(timeout=30)
    # Here 0.2-0.4 MiB: the connections' own objects. Each committed body would add 4 MiB (160
    # in all), a scratch buffer per connection 0.25 MiB (10 in all).
    assert grown < 4, f"{grown:.1f} MiB committed for 40 declared bodies of 4 MiB"


def test_many_clients_at_once(port: int) -> None:
    """Concurrent connections, each with bodies of its own, over one event loop."""

    async def one(seed: int) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = body_of(100_000 + seed * 1000, seed)
        writer.write(request(body))
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        answer = json.loads(await reader.readexactly(length))
        writer.close()
        return bool(answer["sha"] == hashlib.sha256(body).hexdigest() and answer["raw"])

    async def every() -> list[bool]:
        return await asyncio.gather(*(one(seed) for seed in range(16)))

    assert all(asyncio.run(every()))
