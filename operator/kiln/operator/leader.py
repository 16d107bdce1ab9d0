"""Leader election between replicas of the operator: a coordination.k8s.io Lease, with
client-go's rules (k8s.io/client-go/tools/leaderelection).

Why not Kopf's peering: it is no election. Peers of equal priority all run at once (each only
warns), and a higher-priority peer pauses the others only once its peering object is seen,
after up to a minute. Two writers of one status, or two creators of one Job, is what Kiln must
never have, so exactly one replica runs Kopf at all; the others wait, doing nothing but reading
the Lease every `retry_seconds`.

- A candidate takes the Lease when it is absent, released (no holder), or expired: unchanged
  for `leaseDurationSeconds` since this replica first saw it that way. The expiry is measured
  on this replica's clock from when it saw the record change, never from the holder's
  `renewTime`, so clocks that disagree between nodes cannot cut a lease short (client-go's
  observedTime).
- Every write is a create, or a replace with the resourceVersion just read, so of two replicas
  racing for the Lease exactly one write succeeds (409 for the other).
- The leader renews every `retry_seconds`; one that has not renewed for
  `renew_deadline_seconds`, or that finds another holder, exits at once: it stops writing before
  any standby may take over, since the deadline is shorter than the lease.
- A renewal is one request where it can be: the leader replaces the Lease with the record it
  last wrote, at that record's resourceVersion (client-go's optimistic fast path). Only when that
  conflicts (someone else wrote the Lease) does it read and decide again. On a slow API server
  that halves the round trips a renewal needs before its deadline.
- A renewal's calls may take all the time left before the renew deadline (not a fixed share of
  it), since a slow answer that lands in time keeps the lease and an abandoned one cannot; and a
  renewal that failed is tried again one retry period after it *started*, so a call that timed
  out leaves the rest of the deadline for further tries.
- A leader that stops gracefully releases the Lease, so a standby takes over within one retry
  period instead of a whole lease.
- The same identity re-acquires its own Lease at once: a container restarting in the same pod
  (the identity is the pod's name) does not wait for its own lease to run out.

`decide` is the whole policy, pure; `LeaseElector` only reads, calls it and writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from kiln.api.errors import ExitCode

log = logging.getLogger(__name__)

# What a Lease read or write may raise that says nothing about the Lease itself: the API server
# refused or failed (ApiException), or could not be reached. Retried next period.
_TRANSIENT = (ApiException, urllib3.exceptions.HTTPError, OSError)


def default_identity() -> str:
    """The pod's name (downward API), else host and process: unique among live replicas."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class LeaderElection:
    """Which Lease, who we are, and client-go's three timings (its defaults, 15/10/2 s)."""

    namespace: str
    name: str = "kiln-operator"
    identity: str = field(default_factory=default_identity)
    lease_seconds: int = 15  # the Lease's leaseDurationSeconds (an int32 in the API)
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0

    def __post_init__(self) -> None:
        # A leader must give up before a standby may take over, and must get a few tries first.
        if not 0 < self.retry_seconds < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(
                "leader election needs 0 < retry < renew deadline < lease, got "
                f"{self.retry_seconds}, {self.renew_deadline_seconds}, {self.lease_seconds}"
            )
        if not self.identity:
            raise ValueError("leader election needs a non-empty identity")

    @classmethod
    def scaled(cls, namespace: str, name: str, identity: str, lease_seconds: int) -> LeaderElection:
        """The renew deadline and retry period in client-go's proportions to the lease
        (15 s: 10 s and 2 s), so one setting cannot break their order."""
        return cls(
            namespace, name, identity, lease_seconds, lease_seconds * 2 / 3, lease_seconds / 7.5
        )


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec as the election reads and writes it; `holder` is "" once released."""

    holder: str
    lease_seconds: int
    acquire_time: datetime | None
    renew_time: datetime | None
    transitions: int
    # Not part of the record's value: a replace sends it back for optimistic concurrency.
    resource_version: str = field(default="", compare=False)


class LeaseAction(Enum):
    CREATE = "create"  # no Lease yet
    TAKE_OVER = "take over"  # released, or expired in another holder's hands
    RENEW = "renew"  # ours already
    WAIT = "wait"  # another holder's, not expired


@dataclass(frozen=True)
class Decision:
    action: LeaseAction
    record: LeaseRecord | None  # what to write; None for WAIT


def expires_at(lease: LeaseRecord, observed_at: datetime | None = None) -> datetime | None:
    """When another holder's lease runs out: `leaseDurationSeconds` after `observed_at` (our
    clock, when this record was first seen), else after its renewTime (the holder's clock)."""
    since = observed_at or lease.renew_time or lease.acquire_time
    return None if since is None else since + timedelta(seconds=lease.lease_seconds)


def decide(
    lease: LeaseRecord | None,
    identity: str,
    now: datetime,
    lease_seconds: int,
    observed_at: datetime | None = None,
) -> Decision:
    """What a replica called `identity` does with the Lease it just read (None: absent)."""
    if lease is None:
        return Decision(LeaseAction.CREATE, LeaseRecord(identity, lease_seconds, now, now, 0))
    if lease.holder == identity:
        renewed = replace(
            lease,
            lease_seconds=lease_seconds,
            renew_time=now,
            acquire_time=lease.acquire_time or now,
        )
        return Decision(LeaseAction.RENEW, renewed)
    expiry = expires_at(lease, observed_at)
    if lease.holder and expiry is not None and now < expiry:
        return Decision(LeaseAction.WAIT, None)
    taken = LeaseRecord(
        identity, lease_seconds, now, now, lease.transitions + 1, lease.resource_version
    )
    return Decision(LeaseAction.TAKE_OVER, taken)


def released(lease: LeaseRecord, now: datetime) -> LeaseRecord:
    """The record a leader leaves behind on a graceful stop: no holder, so a standby takes it
    at its next try; a 1 s lease as well, for a candidate that treats "" as a holder."""
    return replace(lease, holder="", lease_seconds=1, renew_time=now)


def overdue(renewed_at: float, now: float, deadline: float) -> bool:
    """Whether a leader last renewed (monotonic seconds) longer ago than its renew deadline."""
    return now - renewed_at > deadline


def retry_pause(retry_seconds: float, step_seconds: float, renewed: bool) -> float:
    """How long a leader waits before its next renewal: a retry period after a success; after a
    failure, what is left of the retry period since the failed step began, so a call that hung
    until its timeout is followed by another try at once, while the deadline still allows."""
    return retry_seconds if renewed else max(0.0, retry_seconds - step_seconds)


def micro_time(moment: datetime | None) -> str | None:
    """A Kubernetes MicroTime: RFC 3339 in UTC with microseconds."""
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_of(lease: Any) -> LeaseRecord:
    """The record in a `V1Lease` the client read (datetimes already parsed, timezone-aware)."""
    spec = lease.spec
    return LeaseRecord(
        holder=spec.holder_identity or "",
        lease_seconds=spec.lease_duration_seconds or 0,
        acquire_time=spec.acquire_time,
        renew_time=spec.renew_time,
        transitions=spec.lease_transitions or 0,
        resource_version=lease.metadata.resource_version or "",
    )


def lease_body(settings: LeaderElection, record: LeaseRecord) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": settings.name, "namespace": settings.namespace}
    if record.resource_version:  # a replace: the API server refuses it if the Lease changed
        metadata["resourceVersion"] = record.resource_version
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": record.holder,
            "leaseDurationSeconds": record.lease_seconds,
            "acquireTime": micro_time(record.acquire_time),
            "renewTime": micro_time(record.renew_time),
            "leaseTransitions": record.transitions,
        },
    }


def exit_lost(reason: str) -> None:
    """Stop the process at once: no graceful shutdown, since that would let Kopf and the
    reconcile threads write on. The kubelet restarts the container, which comes back standby."""
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not a bug, not bad input: the API server was out of reach, or this replica was too slow
    # to renew; the same container started again is simply the next standby.
    os._exit(ExitCode.TRANSIENT)


class LeaseElector:
    """One replica's side of the election against the API server (`CoordinationV1Api`)."""

    def __init__(
        self,
        api: Any,
        settings: LeaderElection,
        on_lost: Callable[[str], None] = exit_lost,
    ) -> None:
        self.api = api
        self.settings = settings
        self.on_lost = on_lost  # only a test passes another, to see it called
        self.previous: LeaseRecord | None = None  # the record the last step read
        self.ours: LeaseRecord | None = None  # the record this replica last wrote, as stored
        self._seen: tuple[LeaseRecord | None, datetime] | None = None  # and since when
        self._renewed_at = time.monotonic()
        self._leading = False  # renewing, with a deadline: from start_renewing on
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def where(self) -> str:
        return f"{self.settings.namespace}/{self.settings.name}"

    # -- one step ------------------------------------------------------------------------------

    def step(self, renewing: bool = False) -> Decision | None:
        """Read the Lease, decide, write: the decision carried out (WAIT included), or None when
        the write lost a race or the API failed; either way the caller tries again next period.
        A renewing leader first tries the one-request renewal; it writes nothing unless the
        Lease is still its own."""
        started = time.monotonic()
        try:
            decision = self._renew_as_written() if renewing else None
            if decision is None:
                decision = self._read_and_decide()
                if renewing and decision.action is not LeaseAction.RENEW:
                    return decision
                if decision.record is not None and not self._write(
                    decision.action, decision.record
                ):
                    return None
        except _TRANSIENT as exc:
            log.warning(f"lease {self.where}: {_brief(exc)}; trying again")
            return None
        if decision.action is not LeaseAction.WAIT:
            # The start of the step, not its end: the write landed somewhere in between.
            self._renewed_at = started
        return decision

    def _renew_as_written(self) -> Decision | None:
        """client-go's fast path: replace the Lease with the record this replica last wrote,
        renewed, at its resourceVersion. None when there is no such record or the Lease changed
        since (409: another writer, or a write of ours whose answer was lost): read it then."""
        if self.ours is None:
            return None
        renewed = replace(self.ours, renew_time=datetime.now(UTC))
        if not self._write(LeaseAction.RENEW, renewed, quiet=True):
            return None
        return Decision(LeaseAction.RENEW, renewed)

    def _read_and_decide(self) -> Decision:
        current = self.read()
        return decide(
            current,
            self.settings.identity,
            datetime.now(UTC),
            self.settings.lease_seconds,
            self._observed(current),
        )

    def read(self) -> LeaseRecord | None:
        try:
            lease = self.api.read_namespaced_lease(
                self.settings.name, self.settings.namespace, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return record_of(lease)

    @property
    def _timeout(self) -> float:
        """Bounds a hung call; the renew deadline itself is kept by the watchdog thread. A
        leader's call may take what is left of its deadline (a retry period at least): an answer
        that lands in time keeps the lease, while one given up on is only more load."""
        if not self._leading:  # a standby's calls have no deadline but their own
            return self.settings.renew_deadline_seconds / 2
        left = self._renewed_at + self.settings.renew_deadline_seconds - time.monotonic()
        return max(left, self.settings.retry_seconds)

    def _observed(self, current: LeaseRecord | None) -> datetime:
        """When this replica first saw the record it just read (records compare without their
        resourceVersion): the start of the lease's term as this replica's clock knows it."""
        self.previous = current
        if self._seen is None or self._seen[0] != current:
            self._seen = (current, datetime.now(UTC))
        return self._seen[1]

    def _write(self, action: LeaseAction, record: LeaseRecord, quiet: bool = False) -> bool:
        """Create or replace the Lease; False when another replica wrote first (logged unless
        `quiet`). What the API server stored is kept in `ours` for the next renewal."""
        body = lease_body(self.settings, record)
        name, namespace = self.settings.name, self.settings.namespace
        try:
            if action is LeaseAction.CREATE:
                stored = self.api.create_namespaced_lease(
                    namespace, body, _request_timeout=self._timeout
                )
            else:
                stored = self.api.replace_namespaced_lease(
                    name, namespace, body, _request_timeout=self._timeout
                )
        except ApiException as exc:
            # AlreadyExists or Conflict (or deleted meanwhile): another replica wrote first.
            if exc.status in (404, 409):
                self.ours = None
                if not quiet:
                    log.info(f"lease {self.where}: another replica wrote it first ({exc.reason})")
                return False
            raise
        self.ours = record_of(stored) if record.holder == self.settings.identity else None
        return True

    # -- standby -------------------------------------------------------------------------------

    def acquire(self, liveness: str | None = None) -> None:
        """Block until this replica holds the Lease, trying every `retry_seconds`; meanwhile
        answer the liveness URL (Kopf's, not started yet) so the kubelet keeps the standby."""
        waiting_for: str | None = None
        with standby_liveness(liveness):
            while True:
                decision = self.step()
                if decision is not None and decision.action is not LeaseAction.WAIT:
                    break
                waiting_for = self._log_standby(decision, waiting_for)
                time.sleep(self.settings.retry_seconds)
        log.info(f"acquired the lease {self.where} as {self.settings.identity}: {self._how()}")

    def _log_standby(self, decision: Decision | None, logged_for: str | None) -> str | None:
        """One line when the replica becomes standby, and one each time the holder changes."""
        if decision is None or self.previous is None or self.previous.holder == logged_for:
            return logged_for
        expiry = expires_at(self.previous, self._seen[1] if self._seen else None)
        left = (expiry - datetime.now(UTC)).total_seconds() if expiry else 0.0
        log.info(
            f"standby: the lease {self.where} is held by {self.previous.holder} (expires in "
            f"{max(left, 0.0):.1f}s unless renewed); trying every {self.settings.retry_seconds:g}s"
        )
        return self.previous.holder

    def _how(self) -> str:
        before = self.previous
        if before is None:
            return "created it"
        if before.holder == self.settings.identity:
            return "it was ours already (the same pod restarted)"
        if not before.holder:
            return "took over a released lease"
        return f"took over from {before.holder}, whose lease expired"

    # -- leader --------------------------------------------------------------------------------

    def start_renewing(self) -> None:
        """Renew every `retry_seconds` in one daemon thread; a second one enforces the renew
        deadline, so a call that hangs cannot hold the process past it. The deadline counts
        from the start of the step that acquired the Lease, not from now."""
        self._leading = True
        for target, name in ((self._renew, "lease-renew"), (self._watch, "lease-deadline")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _renew(self) -> None:
        pause = self.settings.retry_seconds
        while not self._stop.wait(pause):
            started = time.monotonic()
            decision = self.step(renewing=True)
            if decision is not None and decision.action is not LeaseAction.RENEW:
                self._lose(f"the lease is now {_state(self.previous)}")
                return
            pause = retry_pause(
                self.settings.retry_seconds, time.monotonic() - started, decision is not None
            )

    def _watch(self) -> None:
        deadline = self.settings.renew_deadline_seconds
        while not self._stop.wait(self.settings.retry_seconds / 2):
            if overdue(self._renewed_at, time.monotonic(), deadline):
                late = time.monotonic() - self._renewed_at
                self._lose(f"not renewed for {late:.1f}s (renew deadline {deadline:g}s)")
                return

    def _lose(self, reason: str) -> None:
        if self._lost.is_set():
            return  # the other thread said it already
        self._lost.set()
        self._stop.set()
        log.error(f"lost the lease {self.where}: {reason}; exiting at once so as to write no more")
        self.on_lost(reason)

    def release(self) -> None:
        """Stop renewing and hand the Lease back, if it is still ours (a graceful stop)."""
        self._stop.set()
        for thread in self._threads:
            thread.join()
        if self._lost.is_set():
            return
        try:
            current = self.read()
            if current is None or current.holder != self.settings.identity:
                log.info(f"lease {self.where} not released: it is no longer ours")
                return
            if self._write(LeaseAction.RENEW, released(current, datetime.now(UTC))):
                log.info(f"released the lease {self.where}: a standby takes over at its next try")
        except _TRANSIENT as exc:
            log.warning(
                f"could not release the lease {self.where} ({_brief(exc)}); a standby takes "
                f"over once it expires, within {self.settings.lease_seconds}s"
            )


def _state(lease: LeaseRecord | None) -> str:
    if lease is None:
        return "deleted"
    return f"held by {lease.holder}" if lease.holder else "released by someone else"


def _brief(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"API server answered {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


# -- liveness while standby ------------------------------------------------------------------


def _answer(path: str) -> type[BaseHTTPRequestHandler]:
    class StandbyProbe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server calls it by this name
            found = urllib.parse.urlsplit(self.path).path == path
            body = json.dumps({"standby": True}).encode() if found else b""
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a probe every few seconds is no news

    return StandbyProbe


@contextlib.contextmanager
def standby_liveness(url: str | None) -> Iterator[None]:
    """Answer 200 `{"standby": true}` on Kopf's liveness URL (host, port and path parsed as
    Kopf does) until the block ends; the port is closed again before Kopf binds it."""
    if not url:
        yield
        return
    parts = urllib.parse.urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    server = ThreadingHTTPServer(address, _answer(parts.path))
    thread = threading.Thread(target=server.serve_forever, name="standby-liveness", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
