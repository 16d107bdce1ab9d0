"""One small pure function per condition (cert-manager's readiness chain is the model): each
reads the pass's decisions and returns a `Verdict`; the plan records them in order."""

from __future__ import annotations

from collections.abc import Sequence

from kiln.api.status import ConditionType, Reason, State, TargetPhase
from kiln.api.summary import summary_of
from kiln.operator.conditions import Problem, Verdict
from kiln.operator.decide import ExportDecision, JobPhase, TargetDecision

C, R = ConditionType, Reason
# Targets whose builder Job is still to finish (a rollout is not a build).
BUILDING = frozenset({TargetPhase.BUILDING, TargetPhase.RETRYING})
# Targets whose builder has finished (a stored result, or a failed Job).
FINISHED = frozenset(
    {
        TargetPhase.FAILED,
        TargetPhase.SKIPPED,
        TargetPhase.BUILT,
        TargetPhase.ROLLING_OUT,
        TargetPhase.SERVING,
    }
)


def accepted() -> Verdict:
    return Verdict(C.ACCEPTED, True, R.ACCEPTED, "spec accepted; source and calibration found")


def exported(export: ExportDecision) -> list[Verdict]:
    if export.phase is JobPhase.DONE:
        return [Verdict(C.EXPORTED, True, R.EXPORTED, export.message)]
    if export.phase is JobPhase.FAILED:
        return [
            Verdict(C.EXPORTED, False, R.EXPORT_FAILED, export.message),
            Verdict(C.DEGRADED, True, R.EXPORT_FAILED, export.message),
        ]
    return [Verdict(C.EXPORTED, False, R.EXPORTING, export.message)]


def _live(decisions: Sequence[TargetDecision]) -> list[TargetDecision]:
    return [d for d in decisions if d.phase is not TargetPhase.STALE]


def built(decisions: Sequence[TargetDecision]) -> Verdict:
    live = _live(decisions)
    pending = sum(1 for d in live if d.phase in BUILDING)
    if pending:
        return Verdict(C.BUILT, False, R.BUILDING, f"{pending} of {len(live)} target(s) building")
    done = sum(1 for d in live if d.phase in FINISHED)
    return Verdict(C.BUILT, True, R.BUILT, f"{done} target(s) built")


def benchmarked(decisions: Sequence[TargetDecision]) -> Verdict:
    live = _live(decisions)
    finished = [d for d in live if d.phase in FINISHED]
    if not finished or any(d.phase in BUILDING for d in live):
        return Verdict(C.BENCHMARKED, False, R.BUILDING, "waiting for builder Jobs")
    measured = sum(1 for d in finished if d.status is not None and d.status.state is State.OK)
    return Verdict(
        C.BENCHMARKED,
        measured > 0,
        R.BENCHMARKED if measured else R.NOTHING_MEASURED,
        f"{measured} target(s) measured against their PyTorch baseline",
    )


def ready(decisions: Sequence[TargetDecision]) -> Verdict:
    live = _live(decisions)
    serving = [d.status for d in live if d.phase is TargetPhase.SERVING and d.status]
    if serving:
        return Verdict(
            C.READY, True, R.SERVING, ", ".join(f"{t.selected}@{t.name}" for t in serving)
        )
    if any(d.phase is TargetPhase.ROLLING_OUT for d in live):
        return Verdict(C.READY, False, R.ROLLING_OUT, "waiting for inference pods to become ready")
    if any(d.phase in BUILDING for d in live):
        return Verdict(C.READY, False, R.BUILDING, "no target has a selected engine yet")
    statuses = [d.status for d in live if d.status is not None]
    return Verdict(C.READY, False, R.NO_IMPROVEMENT, summary_of(statuses))


def degraded(problems: Sequence[Problem]) -> Verdict:
    """Degraded with the problems' reason (Problems when they differ), else AsExpected."""
    if not problems:
        return Verdict(C.DEGRADED, False, R.AS_EXPECTED, "no problems")
    reasons = {p.reason for p in problems}
    reason = reasons.pop() if len(reasons) == 1 else R.PROBLEMS
    return Verdict(C.DEGRADED, True, reason, "; ".join(p.message for p in problems))
