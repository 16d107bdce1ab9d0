"""What a device call brings back: at most 8 files in $OUT, so two. `summary.json` holds every
step's state, reason, limit and duration, what the probe read of the machine, and for each
`status.json` of the results its phase, summary, selection and every candidate's figures;
`logs.txt` holds the last lines of each step's log. Standard library only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOG_LINES = 150
CANDIDATE_FIELDS = (
    "name",
    "state",
    "speedup",
    "speedupInterval",
    "reason",
    "accuracy",
    "benchmarks",
)
TARGET_FIELDS = ("name", "device", "state", "selected", "selectionReason", "reason", "capacity")


def target_summary(target: dict[str, Any]) -> dict[str, Any]:
    picked = {k: target.get(k) for k in TARGET_FIELDS}
    picked["candidates"] = [
        {k: c.get(k) for k in CANDIDATE_FIELDS} for c in target.get("candidates", [])
    ]
    return picked


def statuses(results: Path) -> dict[str, Any]:
    found = {}
    for status in sorted(results.glob("**/status.json")):
        data = json.loads(status.read_text())
        found[str(status.relative_to(results))] = {
            "phase": data.get("phase"),
            "summary": data.get("summary"),
            "targets": [target_summary(t) for t in data.get("targets", [])],
        }
    return found


def collect(results: Path, out: Path, summary: dict[str, Any]) -> None:
    """Write summary.json and logs.txt into `out` (safe to call after every step: a call cut
    off at its limit still brings back what had finished)."""
    out.mkdir(parents=True, exist_ok=True)
    whole = {**summary, "statuses": statuses(results)}
    (out / "summary.json").write_text(json.dumps(whole, indent=2) + "\n")
    with (out / "logs.txt").open("w") as logs:
        for log in sorted(results.glob("*.log"), key=lambda p: p.stat().st_mtime):
            lines = log.read_text(errors="replace").splitlines()[-LOG_LINES:]
            logs.write(f"===== {log.name} (last {len(lines)} lines)\n" + "\n".join(lines) + "\n")
