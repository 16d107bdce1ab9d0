"""Operator settings: flags of `kiln operator`, or KILN_* environment variables.

The defaults live here only: the command passes on what was given and leaves the rest to them.
(The namespaces to watch are no setting of a pass: they go to `kopf.run`.)"""

from __future__ import annotations

from pydantic import BaseModel, Field

from kiln.api.version import DEFAULT_IMAGE
from kiln.operator.targets import DEFAULT_GPU_LABEL


class OperatorConfig(BaseModel):
    builder_image: str = DEFAULT_IMAGE
    server_image: str = DEFAULT_IMAGE
    gpu_label: str = DEFAULT_GPU_LABEL
    artifacts_uri: str | None = Field(
        default=None, description="artifact store for specs that name none (s3://bucket/prefix)"
    )
    credentials_secret: str | None = None
    backoff_limit: int = 2
    job_deadline_seconds: int = 3600
    job_ttl_seconds: int = 24 * 3600
    requeue_seconds: float = Field(
        default=10.0, description="re-check while something is in flight (Jobs, rollouts)"
    )
    resync_seconds: float = Field(
        default=60.0,
        description="re-check a settled resource (new objects under the same source URI); "
        "watch events on children, nodes and the spec wake it at once",
    )
    source_check_seconds: float = Field(
        default=60.0,
        ge=0,
        description="trust a source's identity read from storage this long (shared by every "
        "resource with the same source and calibration URIs); 0: read it on every pass",
    )
    workers: int = Field(default=8, ge=1, description="reconcile passes running at once")
    image_pull_policy: str = "IfNotPresent"
