"""How often a leader loses its Lease on a busy machine: Kiln's renewal as it is, against the
one before it, side by side in one run against the same API server.

    .venv/bin/python benchmarks/lease_renewal.py [--minutes 10] [--hogs 2] [--lease-seconds 15]

Starts the local cluster (etcd, API server, controllers, kwok with the default node set; no
executor), N CPU hogs beside it (`yes`, one process each), and two electors in this process,
each holding a Lease of its own with the operator's timings (a lease, and the renew deadline
and retry period in client-go's proportions: 15 s, 10 s, 2 s by default):

- `current`: kiln.operator.leader as it is: one request per renewal while the Lease is as the
  leader wrote it, each call bounded by what is left of the deadline, a failed try followed by
  the next one a retry period after it began;
- `before`: the renewal up to this change: a read and a write per renewal, each call bounded by
  half the deadline, and a whole retry period after every try.

A leader that misses its deadline is counted and takes its Lease back at once (the same
identity, as its container restarted would). Printed per elector: renewals, failed tries,
leases lost (and per hour), and a renewal's round trip (median, 99th percentile, maximum); then
the load average. Both electors share the machine with the cluster and the hogs, so the
comparison holds for this machine's load, not beyond it. The last line is `RESULT key=value`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubernetes import client  # noqa: E402

from kiln.operator.leader import Decision, LeaderElection, LeaseAction, LeaseElector  # noqa: E402
from tests.cluster import cluster  # noqa: E402


@dataclass
class Tally:
    name: str
    renewals: list[float] = field(default_factory=list)  # seconds per successful renewal
    failed: int = 0
    lost: list[str] = field(default_factory=list)


class Current(LeaseElector):
    """Kiln's elector, with each renewal timed."""

    tally: Tally

    def step(self, renewing: bool = False) -> Decision | None:
        started = time.monotonic()
        decision = super().step(renewing)
        if renewing and decision is None:
            self.tally.failed += 1
        elif renewing:
            self.tally.renewals.append(time.monotonic() - started)
        return decision


class Before(Current):
    """The renewal up to this change, for comparison only: always a read, then a write."""

    def _renew_as_written(self) -> Decision | None:
        return None

    @property
    def _timeout(self) -> float:
        return self.settings.renew_deadline_seconds / 2

    def _renew(self) -> None:
        while not self._stop.wait(self.settings.retry_seconds):
            decision = self.step(renewing=True)
            if decision is not None and decision.action is not LeaseAction.RENEW:
                self._lose("the lease is held by another")
                return


def hold(
    kind: type[Current], info: cluster.ClusterInfo, settings: LeaderElection, until: float
) -> Tally:
    """Lead with `kind` until `until`, taking the Lease back whenever it is lost."""
    tally = Tally(kind.__name__.lower())
    api = client.CoordinationV1Api(info.api_client())
    while time.monotonic() < until:
        lost = threading.Event()

        def on_lost(reason: str, lost: threading.Event = lost) -> None:
            tally.lost.append(reason)
            lost.set()

        elector = kind(api, settings, on_lost=on_lost)
        elector.tally = tally
        elector.acquire()
        elector.start_renewing()
        lost.wait(max(0.0, until - time.monotonic()))
        elector.release()
    return tally


def row(tally: Tally, hours: float) -> str:
    times = sorted(tally.renewals) or [float("nan")]
    p99 = statistics.quantiles(times, n=100, method="inclusive")[98] if len(times) > 1 else times[0]
    return (
        f"{tally.name:8} renewals {len(tally.renewals):5}  failed tries {tally.failed:4}  "
        f"lost {len(tally.lost):3} ({len(tally.lost) / hours:5.1f}/h)  round trip "
        f"median {statistics.median(times) * 1000:6.0f} ms  p99 {p99 * 1000:6.0f} ms  "
        f"max {times[-1] * 1000:6.0f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--hogs", type=int, default=2, help="CPU hogs beside the cluster")
    parser.add_argument("--lease-seconds", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-lease-") as tmp:
        info = cluster.up(Path(tmp) / "cluster", executor=False)
        hogs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(args.hogs)]
        loads: list[float] = []
        try:
            until = time.monotonic() + args.minutes * 60
            tallies: list[Tally] = []

            def lead(kind: type[Current]) -> None:
                name = kind.__name__.lower()  # a Lease of its own
                settings = LeaderElection.scaled("default", name, "bench", args.lease_seconds)
                tallies.append(hold(kind, info, settings, until))

            threads = [threading.Thread(target=lead, args=(k,)) for k in (Current, Before)]
            for thread in threads:
                thread.start()
            while any(t.is_alive() for t in threads):
                loads.append(os.getloadavg()[0])
                time.sleep(10)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
            cluster.down(Path(tmp) / "cluster")
    hours = args.minutes / 60
    settings = LeaderElection.scaled("default", "x", "x", args.lease_seconds)
    print(
        f"{args.minutes:g} min, {args.hogs} CPU hog(s), lease {settings.lease_seconds}s, renew "
        f"deadline {settings.renew_deadline_seconds:g}s, retry {settings.retry_seconds:g}s; "
        f"load average {statistics.mean(loads):.1f} (max {max(loads):.1f}) on {os.cpu_count()} "
        "CPUs"
    )
    for tally in sorted(tallies, key=lambda t: t.name):
        print(row(tally, hours))
        for reason in dict.fromkeys(tally.lost):
            print(f"           lost: {reason}")
    figures = " ".join(f"{t.name}_lost={len(t.lost)}" for t in tallies)
    print(f"RESULT minutes={args.minutes:g} hogs={args.hogs} {figures}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
