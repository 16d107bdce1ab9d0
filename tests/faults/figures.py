"""The reliability figures, one row per fault run, in one table (README's "Reliability").

Each fault test prints its row with `report(...)` (a marked JSON line in its output, so the
row is there with `pytest -s` too); benchmarks/reliability.py runs those tests and prints
`table(...)` of every row it finds."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

MARK = "RELIABILITY "
COLUMNS = {
    "run": "run",
    "faults": "faults injected",
    "resources": "resources",
    "jobs": "Jobs (expected)",
    "duplicates": "duplicate Jobs",
    "lost": "lost results",
    "requests": "requests",
    "errors": "errors",
    "wrong": "wrong answers",
    "latency": "p50 / p99",
}


def report(run: str, **cells: Any) -> None:
    """Print this run's row; cells are keyed as COLUMNS (missing ones print as "-")."""
    unknown = set(cells) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown reliability columns {sorted(unknown)}")
    print(f"\n{MARK}{json.dumps({'run': run, **cells})}", flush=True)


def rows(lines: Iterable[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for line in lines:
        if line.startswith(MARK):
            found.append(json.loads(line[len(MARK) :]))
    return found


def table(found: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(COLUMNS.values()) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    body = ["| " + " | ".join(str(r.get(k, "-")) for k in COLUMNS) + " |" for r in found]
    return "\n".join([head, rule, *body])
