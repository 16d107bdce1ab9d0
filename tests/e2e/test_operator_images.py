"""Kiln's own images on the local cluster, against its real API server.

1. The operator image runs the operator: the rendered Deployment's container (its args, its
   environment, the ServiceAccount's token) run in `localhost/kiln-operator:VERSION` by
   tests/images/run.py, with the host's network; a resource reaches Ready. The image is built
   here (about 30 s warm), so this runs wherever a container tool is present or installable.
2. Builder pods run in the builder image: the operator is told `--builder-image
   localhost/kiln-builder:VERSION`, and the executor runs pods naming a `localhost/` image
   inside that image (its entrypoint, user, env and bind mounts), so the Jobs run the image's
   own `kiln` and Python, not the working tree's. That image comes from `make images`; where it
   is not in the local store the test says SKIPPED with that reason (CI builds only the small
   operator image)."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.cluster.cluster import ClusterInfo
from tests.cluster.executor import LOCAL_PREFIX
from tests.cluster.install import OPERATOR_NAMESPACE, install, operator_command, s3_secret
from tests.e2e.test_operator import (
    Operator,
    apply,
    conditions,
    create_namespace,
    job_names,
    ready,
    resource,
    running_operator,
    wait_status,
)
from tests.images import build
from tests.images.engine import Engine
from tests.images.run import Container, started

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]


def portable_kubeconfig(source: Path, target: Path) -> Path:
    """The kubeconfig with its CA inline and readable by the image's non-root user: the
    container sees only this file, not the host's certificate folder."""
    config = yaml.safe_load(source.read_text())
    for entry in config["clusters"]:
        cluster = entry["cluster"]
        if "certificate-authority" in cluster:
            data = Path(cluster.pop("certificate-authority")).read_bytes()
            cluster["certificate-authority-data"] = base64.b64encode(data).decode()
    target.write_text(yaml.safe_dump(config))
    target.chmod(0o644)
    return target


def test_the_operator_image_runs_the_operator_to_ready(
    cluster: ClusterInfo,
    engine: Engine,
    operator_image: build.Built,
    tiny_uploaded: None,
    tmp_path: Path,
) -> None:
    if not engine.can_run:
        pytest.skip(f"{engine.tool} cannot run images here (podman needs an OCI runtime)")
    image = LOCAL_PREFIX + operator_image.image
    documents = install(cluster)
    s3_secret(cluster, OPERATOR_NAMESPACE)
    # Its own namespace only: resources other tests left behind are not its business.
    ns = create_namespace(cluster, "operator-image")
    extra = ("--resync-seconds", "30", "--namespace", ns)
    command = operator_command(cluster, documents, tmp_path, *extra)
    kubeconfig = "/etc/kiln/kubeconfig"  # not under /var/run: a symlink buildah mounts over
    args = command.argv[1:]  # the image's entrypoint is its own `kiln`
    args[args.index("--kubeconfig") + 1] = kubeconfig
    container = Container(
        image,
        args=args,
        env=command.pod_env,
        mounts={kubeconfig: portable_kubeconfig(command.kubeconfig, tmp_path / "kubeconfig")},
    )
    log = tmp_path / "operator.log"
    with log.open("wb") as sink, started(engine, container, stdout=sink) as process:
        op = Operator(cluster, [], {}, log, command.liveness, process=process)
        apply(op, resource("tiny", ns))
        status = wait_status(op, ns, "tiny", ready(), "phase Ready", timeout=900)
        assert conditions(status)["Ready"]["status"] == "True"
        assert next(t for t in status["targets"] if t["name"] == "cpu")["selected"]
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def builder_image(engine: Engine) -> str:
    image = LOCAL_PREFIX + build.image_name("builder")
    if not engine.can_run or not engine.exists(image):
        pytest.skip(f"{image} is not built here: `make images` builds it (several GB)")
    return image


@pytest.fixture(scope="module")
def imaged_operator(
    cluster: ClusterInfo,
    builder_image: str,
    tiny_uploaded: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Operator, str]]:
    folder = tmp_path_factory.mktemp("e2e-images")
    # Its own namespace only: another builder image means other cache keys, so a cluster-wide
    # operator would rebuild every resource other tests left behind.
    ns = create_namespace(cluster, "images")
    extra = ("--builder-image", builder_image, "--server-image", builder_image, "--namespace", ns)
    with running_operator(cluster, folder, *extra) as op:
        yield op, ns


def test_a_resource_is_built_by_pods_running_in_the_builder_image(
    imaged_operator: tuple[Operator, str], builder_image: str
) -> None:
    op, ns = imaged_operator
    # Its own accuracy and calibration sizes, so no stored result or export of another test
    # is reused: both the export and the build Job run, in the image.
    spec = resource(
        "tiny",
        ns,
        calibration={"uri": "s3://kiln/models/tiny/calibration", "samples": 12, "method": "minmax"},
        accuracy={"samples": 3, "int8MaxDegradation": 0.2},
    )
    apply(op, spec)
    status = wait_status(op, ns, "tiny", ready(), "phase Ready", timeout=1200)
    assert conditions(status)["Ready"]["status"] == "True"
    cpu = next(t for t in status["targets"] if t["name"] == "cpu")
    assert cpu["selected"], cpu
    jobs = job_names(op, ns)
    assert jobs, "no Job ran"
    pods = client.CoreV1Api(op.api()).list_namespaced_pod(ns, label_selector="job-name")
    ran = {p.metadata.name for p in pods.items if p.status.phase == "Succeeded"}
    assert {p.spec.containers[0].image for p in pods.items} == {builder_image}
    executor_log = (op.cluster.root / "logs" / "executor.log").read_text(errors="replace")
    pattern = rf"executor: pod (\S+): in image {re.escape(builder_image)}"
    in_image = set(re.findall(pattern, executor_log))
    assert ran, "no builder pod succeeded"
    assert ran <= in_image, (ran, in_image)
