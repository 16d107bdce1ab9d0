"""A graceful stop the way a Service needs it: readiness turns false first, then the server
stops accepting, then the requests in flight finish.

When a pod is deleted, the kubelet sends SIGTERM at about the moment the endpoints controller
starts removing the pod from its Services, and clients (kube-proxy rules, gRPC balancers) learn
of it a little later. A server that stopped accepting at once would refuse the requests still
routed to it meanwhile; so on the first SIGTERM Kiln only reports not-ready and keeps serving for
`drain_seconds`, then lets uvicorn stop as usual (no new connections, in-flight requests
finish, then the lifespan's shutdown stops gRPC with its own grace). A second signal, or
Ctrl-C, stops without the drain."""

from __future__ import annotations

import signal
import threading
from types import FrameType

import uvicorn


class Draining:
    """Set once the server was told to stop; the readiness endpoints read it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def start(self) -> None:
        self._event.set()

    @property
    def active(self) -> bool:
        return self._event.is_set()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above in front of its own graceful stop."""

    def __init__(self, config: uvicorn.Config, draining: Draining, drain_seconds: float) -> None:
        super().__init__(config)
        self.draining = draining
        self.drain_seconds = drain_seconds

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining.active or self.drain_seconds <= 0 or sig == signal.SIGINT:
            super().handle_exit(sig, frame)
            return
        self.draining.start()
        timer = threading.Timer(self.drain_seconds, super().handle_exit, args=(sig, frame))
        timer.daemon = True
        timer.start()
