"""One source of API credentials for both halves of the operator: the Kubernetes client that
observe/apply use, and Kopf's own watch connections.

Kopf's fallback login calls the client library's `load_kube_config()` without a file, which
reads the kubeconfig path captured when `kubernetes` was first imported, so an explicit
`--kubeconfig` would be ignored. The operator registers this loader as its login handler
instead, and re-runs it on every re-login (tokens rotate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.api.errors import KilnInputError


def load_configuration(kubeconfig: Path | None) -> Any:
    """A fresh `kubernetes.client.Configuration`: the given kubeconfig, else in-cluster
    (the pod's ServiceAccount), else $KUBECONFIG / ~/.kube/config."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if kubeconfig is not None:
            config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
            return configuration
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as exc:
        # No cluster to talk to is a setup error, permanent until someone fixes it: one line
        # and exit 2, not a traceback (`kiln operator` started outside a pod, say).
        if kubeconfig is not None:
            raise KilnInputError(str(kubeconfig), f"not a usable kubeconfig ({exc})") from exc
        raise KilnInputError("--kubeconfig", f"no cluster credentials: {NO_CLUSTER}") from exc
    return configuration


NO_CLUSTER = (
    "not in a pod (no ServiceAccount) and no kubeconfig found "
    "(give --kubeconfig, or set $KUBECONFIG, or write ~/.kube/config)"
)


def bearer(configuration: Any) -> tuple[str | None, str | None]:
    """(scheme, token) of the configuration's Authorization header, if any (RFC 7235)."""
    # kubernetes>=36 stores the token under BearerToken, older releases under authorization.
    header: str | None = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    if not header:
        return None, None
    scheme, _, token = header.partition(" ")
    return (scheme, token) if token else (None, scheme)
