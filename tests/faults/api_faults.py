"""FAULT INJECTION: run `kiln operator` in this process with API errors injected.

    python -m tests.faults.api_faults operator [flags of kiln operator]

- **409 Conflict on writes.** Every `KILN_FAULT_CONFLICT_EVERY`-th write the Kubernetes client
  sends (POST, PUT, PATCH, DELETE: status patches, server-side applies, Events, the Lease) is
  answered with the API server's own 409 body instead of being sent: what a write that lost a
  race to another writer gets back.
- **410 Gone on watches.** Every Kopf watch stream ends, after `KILN_FAULT_GONE_AFTER` events,
  with the ERROR event the API server sends when a watch's resourceVersion is too old (etcd
  compacted it, or a restarted API server's cache no longer holds it).

Every injected fault is appended, one line each, to the file `KILN_FAULTS_FILE`, so a test can
count them even after the process is SIGKILLed. Everything else is the real operator talking to
the real API server."""

from __future__ import annotations

import itertools
import json
import os
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

_LOCK = threading.Lock()
_writes = itertools.count(1)


def _record(line: str) -> None:
    path = os.environ.get("KILN_FAULTS_FILE")
    if path:
        with _LOCK, Path(path).open("a") as out:
            out.write(line + "\n")


def _conflicts(every: int) -> None:
    from kubernetes.client.exceptions import ApiException
    from kubernetes.client.rest import RESTClientObject

    original = RESTClientObject.request

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if method in ("POST", "PUT", "PATCH", "DELETE") and next(_writes) % every == 0:
            _record(f"409 {method} {url.split('?')[0]}")
            error = ApiException(status=409, reason="Conflict")
            error.body = json.dumps(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "message": "FAULT INJECTION: the object has been modified; "
                    "please apply your changes to the latest version and try again",
                    "reason": "Conflict",
                    "code": 409,
                }
            )
            raise error
        return original(self, method, url, *args, **kwargs)

    RESTClientObject.request = request


def _gone(after: int) -> None:
    from kopf._cogs.clients import watching

    original = watching.watch_objs

    async def watch_objs(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        count = 0
        async for event in original(*args, **kwargs):
            yield event
            count += isinstance(event, dict)
            if count >= after:
                resource = kwargs.get("resource")
                _record(f"410 watch {getattr(resource, 'plural', resource)}")
                yield {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": "FAULT INJECTION: too old resource version",
                        "reason": "Expired",
                        "code": 410,
                    },
                }
                return

    watching.watch_objs = watch_objs


def main() -> None:
    every = int(os.environ.get("KILN_FAULT_CONFLICT_EVERY", "0"))
    after = int(os.environ.get("KILN_FAULT_GONE_AFTER", "0"))
    if every > 0:
        _conflicts(every)
    if after > 0:
        _gone(after)
    from kiln.cli.main import app

    app(sys.argv[1:])


if __name__ == "__main__":
    main()
