"""Pure parts of the local-cluster harness: node sets and the executor's pod translation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cluster import nodes
from tests.cluster.binaries import ComponentError
from tests.cluster.executor import finished_status, launch, rewrite


def test_node_set_renders_gpu_operator_labels_and_scales() -> None:
    pools = nodes.load()
    one = nodes.render(pools)
    assert len(one) == 5
    l4 = next(n for n in one if n["metadata"]["name"] == "kwok-l4-0")
    assert l4["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert l4["metadata"]["labels"]["nvidia.com/gpu.count"] == "1"
    assert l4["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert l4["metadata"]["annotations"][nodes.KWOK_ANNOTATION] == "fake"
    many = nodes.render(
        [{"name": "l4", "count": 1, "labels": {"nvidia.com/gpu.product": "NVIDIA-L4"}}], scale=1000
    )
    assert len(many) == 1000
    assert len({n["metadata"]["name"] for n in many}) == 1000


def pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {
            "volumes": [
                {"name": "request", "configMap": {"name": "req"}},
                {"name": "s", "secret": {"secretName": "sec"}},
            ],
            "containers": [
                {
                    "name": "builder",
                    "image": "kiln",
                    "command": ["kiln"],
                    "args": [
                        "build",
                        "--request",
                        "/etc/kiln/request/request.json",
                        "--termination-log",
                        "/dev/termination-log",
                    ],
                    "envFrom": [{"secretRef": {"name": "creds"}}],
                    "env": [
                        {"name": "CFG", "value": "/etc/kiln/request"},
                        {
                            "name": "TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "sec", "key": "t"}},
                        },
                    ],
                    "volumeMounts": [
                        {"name": "request", "mountPath": "/etc/kiln/request"},
                        {"name": "s", "mountPath": "/var/secret"},
                    ],
                    "terminationMessagePath": "/dev/termination-log",
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
        },
    }


def test_launch_materialises_mounts_and_rewrites_paths(tmp_path: Path) -> None:
    venv = tmp_path / "bin"
    venv.mkdir()
    (venv / "kiln").write_text("#!/bin/sh\n")
    spec = launch(
        pod(),
        tmp_path / "pod",
        {"req": {"request.json": "{}"}},
        {"sec": {"t": "x"}, "creds": {"AWS_ACCESS_KEY_ID": "k"}},
        venv,
    )
    local = tmp_path / "pod" / "volumes" / "request"
    assert spec.argv == [
        str(venv / "kiln"),
        "build",
        "--request",
        str(local / "request.json"),
        "--termination-log",
        str(tmp_path / "pod" / "termination-log"),
    ]
    assert (local / "request.json").read_text() == "{}"
    assert (tmp_path / "pod" / "volumes" / "s" / "t").read_text() == "x"
    assert spec.env == {"AWS_ACCESS_KEY_ID": "k", "CFG": str(local), "TOKEN": "x"}
    assert spec.fallback_to_logs


def test_rewrite_only_touches_whole_path_components(tmp_path: Path) -> None:
    mounts = {"/etc/kiln": tmp_path}
    assert rewrite("/etc/kiln/a", mounts) == f"{tmp_path}/a"
    assert rewrite("/etc/kilnx/a", mounts) == "/etc/kilnx/a"
    assert rewrite("--flag", mounts) == "--flag"


def test_finished_status_is_what_a_kubelet_reports() -> None:
    status = finished_status(pod(), 3, "boom", "t0", "t1")
    assert status["phase"] == "Failed"
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (
        3,
        "Error",
        "boom",
    )
    assert finished_status(pod(), 0, "", "t0", "t1")["phase"] == "Succeeded"


def test_component_errors_name_component_log_and_command() -> None:
    error = ComponentError(
        "kube-apiserver",
        "did not become ready within 120s",
        Path("/x/api.log"),
        ["kube-apiserver", "--v=1"],
    )
    assert str(error) == (
        "kube-apiserver: did not become ready within 120s; see /x/api.log\n"
        "  command: kube-apiserver --v=1"
    )
