"""The suite's tiny model and its calibration set, uploaded to the local cluster's S3 server
(what the e2e tier and benchmarks/operator_reconcile.py build and serve)."""

from __future__ import annotations

from pathlib import Path

from tests.cluster.cluster import ClusterInfo, s3_client

TINY_PREFIX = "models/tiny"
BROKEN_PREFIX = "models/broken"


def upload_tiny(info: ClusterInfo, folder: Path) -> dict[str, str]:
    """The tiny model as a torch.export program with a dynamic batch axis, 32 calibration
    samples, and a source that exists but is no model; their s3:// URIs by role."""
    import torch

    from tests.conftest import write_calibration
    from tests.fixtures.tiny_models import build

    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        build().eval(), (torch.randn(2, 3, 16, 16),), dynamic_shapes={"image": {0: batch}}
    )
    torch.export.save(program, str(folder / "tiny.pt2"))
    write_calibration(folder / "calibration", 32)
    s3 = s3_client(info.s3_endpoint, info.s3_env)
    s3.upload_file(str(folder / "tiny.pt2"), info.bucket, f"{TINY_PREFIX}/tiny.pt2")
    for shard in sorted((folder / "calibration").glob("*.npz")):
        s3.upload_file(str(shard), info.bucket, f"{TINY_PREFIX}/calibration/{shard.name}")
    s3.put_object(Bucket=info.bucket, Key=f"{BROKEN_PREFIX}/broken.pt2", Body=b"not a model")
    return {
        "source": f"s3://{info.bucket}/{TINY_PREFIX}/tiny.pt2",
        "calibration": f"s3://{info.bucket}/{TINY_PREFIX}/calibration",
        "broken": f"s3://{info.bucket}/{BROKEN_PREFIX}/broken.pt2",
    }
