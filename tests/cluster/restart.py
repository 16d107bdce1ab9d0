"""What a kubelet does for a container with `restartPolicy: Always`, for the one process the
development cluster runs outside any kubelet: the operator `make dev-up` starts.

    python tests/cluster/restart.py [--initial S] [--cap S] [--reset-after S] -- COMMAND [ARG...]

It runs COMMAND and, whenever it exits (a lost Lease is exit 3, by design: the kubelet is
meant to start the container again as a standby), starts it again after a back-off: at once the
first time, then 10 s doubling to 5 min, back to the start once a run has lasted 10 min (the
kubelet's crash-loop back-off has the same shape). Each exit and restart is one line on
standard output, which is the command's log too.

The command stays in this process's group, so the SIGTERM `make dev-down` sends to the group
(tests.cluster.processes) reaches it directly; this process then only stops restarting and waits
for it to end. Standard library only: it runs by path, before anything is imported from the
working tree.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType


@dataclass(frozen=True)
class BackOff:
    initial: float = 10.0
    cap: float = 300.0
    reset_after: float = 600.0

    def after(self, restarts: int, ran_seconds: float) -> tuple[int, float]:
        """After a run of `ran_seconds` that followed `restarts` restarts in a row: the count
        this exit makes, and the pause before the next start (pure). A run that lasted starts
        the count anew, and the first restart of a count is at once."""
        in_a_row = 0 if ran_seconds >= self.reset_after else restarts
        pause = 0.0 if in_a_row == 0 else min(self.initial * 2 ** (in_a_row - 1), self.cap)
        return in_a_row + 1, pause


def supervise(argv: Sequence[str], backoff: BackOff, stop: threading.Event) -> int:
    """Run `argv` until `stop` is set, starting it again after every exit; its last exit status
    (128 + the signal's number for one a signal ended, as a shell and the kubelet report it)."""
    restarts = 0
    while True:
        started = time.monotonic()
        code = subprocess.call(list(argv))
        code = 128 - code if code < 0 else code
        if stop.is_set():
            return code
        ran = time.monotonic() - started
        restarts, pause = backoff.after(restarts, ran)
        print(
            f"--- restart: exited with {code} after {ran:.0f}s; starting again in {pause:.0f}s "
            f"(restart {restarts} in a row) ---",
            flush=True,
        )
        if stop.wait(pause):
            return code


def main(arguments: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="restart.py")
    parser.add_argument("--initial", type=float, default=BackOff.initial)
    parser.add_argument("--cap", type=float, default=BackOff.cap)
    parser.add_argument("--reset-after", type=float, default=BackOff.reset_after)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(arguments)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run")
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()  # the group's signal reached the command too: only stop restarting it

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stopping)
    return supervise(command, BackOff(args.initial, args.cap, args.reset_after), stop)


if __name__ == "__main__":
    sys.exit(main())
