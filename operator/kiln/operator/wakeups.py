"""Wake-ups for the per-resource reconcile loops: a watch event on a child (Job, Deployment),
a spec change, or a new GPU type in the cluster wakes the loop of the resource it concerns,
so the operator reacts in well under a second instead of on the next periodic resync.

Everything here runs on the operator's event loop (asyncio primitives are not thread-safe)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

T = TypeVar("T")


class Wakeups:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def register(self, uid: str) -> asyncio.Event:
        return self._events.setdefault(uid, asyncio.Event())

    def unregister(self, uid: str) -> None:
        self._events.pop(uid, None)

    def poke(self, uid: str | None) -> None:
        if uid is not None and uid in self._events:
            self._events[uid].set()

    def poke_all(self) -> None:
        for event in self._events.values():
            event.set()

    def __len__(self) -> int:
        return len(self._events)


class LastSeen(Generic[T]):
    """The last value of a cluster-wide input that every loop reads (the set of GPU types), so
    that only a change of it wakes them all: a watch event that leaves it as it was (a node's
    heartbeat, a second node of a known type) must not cost every resource a pass."""

    def __init__(self, initial: T) -> None:
        self._value = initial

    def update(self, value: T) -> bool:
        """Remember `value`; True when it differs from the one seen before."""
        changed = value != self._value
        self._value = value
        return changed


async def sleep_until_woken(event: asyncio.Event, seconds: float) -> bool:
    """Wait for a poke or `seconds`, whichever comes first; True when poked. The event is
    cleared, so pokes that arrive during the next reconcile are not lost: they wake the loop
    again right after it."""
    woken = False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=max(seconds, 0.0))
        woken = True
    event.clear()
    return woken
