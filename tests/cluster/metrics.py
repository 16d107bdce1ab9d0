"""The API server's own count of the requests it served (`apiserver_request_total` on its
/metrics endpoint), so tests and benchmarks count the operator's calls without trusting the
operator to count them. Shared by the e2e tier and benchmarks/operator_reconcile.py."""

from __future__ import annotations

import re
from collections import Counter

from tests.cluster.cluster import ClusterInfo

_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
WRITE_VERBS = frozenset({"APPLY", "PATCH", "CREATE", "UPDATE", "DELETE", "DELETECOLLECTION"})

Key = tuple[str, str, str]  # (verb, resource, subresource)


def parse(text: str) -> Counter[Key]:
    """Requests served so far by (verb, resource, subresource), from Prometheus text."""
    counts: Counter[Key] = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""))
        counts[key] += int(float(match["value"]))
    return counts


def request_counts(info: ClusterInfo) -> Counter[Key]:
    from tests.cluster.install import kubectl

    return parse(kubectl(info, "get", "--raw", "/metrics"))


def delta(before: Counter[Key], after: Counter[Key]) -> Counter[Key]:
    out = after.copy()
    out.subtract(before)
    return +out  # positive counts only


def writes_to(counts: Counter[Key], resources: set[str]) -> int:
    return sum(
        n for (verb, res, _), n in counts.items() if verb in WRITE_VERBS and res in resources
    )
