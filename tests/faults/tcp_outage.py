"""FAULT INJECTION: a TCP forwarder that can go down and come back on the same port, for an
outage of the S3 server as its clients see one.

Clients (the operator, builder pods) are given the forwarder's address instead of the S3
server's. `down()` closes the listening socket and resets every open connection, so a transfer
in flight breaks and a new connection is refused, as when the server's process dies; `up()`
listens again on the same port. The S3 server behind it keeps its objects: the local one holds
them in memory, so stopping it for real would also lose the bucket, which a real outage does not.
Every byte still comes from the real server; only the path to it is cut."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

CHUNK = 1 << 16


class TcpOutage:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        with socket.socket() as probe:  # a free port, kept across down() and up()
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._trip: bytes | None = None
        self.tripped = threading.Event()
        self.tripped_on = ""  # the request line that took it down

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and reset the open ones."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            open_now, self._open = self._open, set()
        for conn in open_now:
            _reset(conn)

    def trip_on(self, method: bytes) -> None:
        """Go down in the middle of the next request that starts with `method` (b"PUT "),
        after forwarding part of it: an upload cut short, as by a server that died."""
        self.tripped.clear()
        self._trip = method

    @contextlib.contextmanager
    def running(self) -> Iterator[TcpOutage]:
        self.up()
        try:
            yield self
        finally:
            self.down()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # down(): the listener is closed
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    _reset(client)
                    _reset(server)
                    return
                self._open |= {client, server}
            pair = [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink, pair), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pair: list[socket.socket]) -> None:
        try:
            while data := source.recv(CHUNK):
                if self._trip is not None and data.startswith(self._trip):
                    self._trip = None
                    sink.sendall(data[: len(data) // 2])
                    self.tripped_on = data.split(b"\r\n", 1)[0].decode(errors="replace")
                    self.down()
                    self.tripped.set()
                    return
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self._lock:
            pair.pop()  # the second pump to end closes the connection's two sockets
            last = not pair
            if last:
                self._open -= {source, sink}
        if last:
            source.close()
            sink.close()


def _reset(conn: socket.socket) -> None:
    """Close with an RST, as a dead peer's kernel answers: SO_LINGER with a zero timeout."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        conn.close()
