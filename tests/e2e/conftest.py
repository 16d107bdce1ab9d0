"""Fixtures the e2e modules share."""

from __future__ import annotations

import pytest

from tests.cluster.cluster import ClusterInfo, s3_client
from tests.cluster.models import TINY_PREFIX, upload_tiny


@pytest.fixture(scope="session")
def tiny_uploaded(cluster: ClusterInfo, tmp_path_factory: pytest.TempPathFactory) -> None:
    # The same model bytes as test_operator.py's when it ran first, so its results count here.
    s3 = s3_client(cluster.s3_endpoint, cluster.s3_env)
    listed = s3.list_objects_v2(Bucket=cluster.bucket, Prefix=f"{TINY_PREFIX}/tiny.pt2")
    if not listed.get("KeyCount"):
        upload_tiny(cluster, tmp_path_factory.mktemp("tiny"))
