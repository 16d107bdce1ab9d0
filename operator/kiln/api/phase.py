"""The phase rules, owned here so `kiln optimize` (status.json) and the operator (the
resource's status) give the same answer for the same results.

Each target is in one `TargetPhase`; the resource's `Phase` is a pure function of them.
"""

from __future__ import annotations

from collections.abc import Iterable

from kiln.api.status import Phase, State, TargetPhase, TargetStatus

# Something is still happening to these targets: the resource is Building, and the operator
# checks again soon.
IN_FLIGHT = frozenset({TargetPhase.BUILDING, TargetPhase.RETRYING, TargetPhase.ROLLING_OUT})


def result_phase(result: TargetStatus) -> TargetPhase:
    """The phase of a finished target from its result alone."""
    if result.state is State.SKIPPED:
        return TargetPhase.SKIPPED
    if result.state is State.FAILED:
        return TargetPhase.FAILED
    return TargetPhase.SELECTED if result.selected else TargetPhase.BUILT


def resource_phase(targets: Iterable[TargetPhase]) -> Phase:
    """Ready as soon as one target serves (or, locally, has a selection); Building while
    anything is in flight; Failed when nothing could run or something failed; otherwise
    everything ran and nothing beat the gates: NoImprovement."""
    live = [p for p in targets if p is not TargetPhase.STALE]
    if TargetPhase.SERVING in live or TargetPhase.SELECTED in live:
        return Phase.READY
    if any(p in IN_FLIGHT for p in live):
        return Phase.BUILDING
    if live and all(p is TargetPhase.SKIPPED for p in live):
        return Phase.FAILED
    if TargetPhase.FAILED in live:
        return Phase.FAILED
    return Phase.NO_IMPROVEMENT


def results_phase(results: Iterable[TargetStatus]) -> Phase:
    """A local run's phase: every target has its result."""
    return resource_phase(result_phase(r) for r in results)
