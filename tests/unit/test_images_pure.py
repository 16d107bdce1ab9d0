"""The pure parts of building and running images: how a pod's container becomes a run of its
image, the build command each tool takes, and what is read off the machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cluster.executor import LOCAL_PREFIX, in_image, launch, root_refused
from tests.images.base import apt_mirror, base_key
from tests.images.engine import Engine, Tool, parse_size
from tests.images.run import ImageConfig

REPO = Path(__file__).parents[2]
IMAGE = ImageConfig(user="10001", entrypoint=["kiln"], cmd=["operator"], workdir="/", env={})


def test_kubernetes_command_and_args_override_the_entrypoint_and_cmd() -> None:
    assert IMAGE.argv([], []) == ["kiln", "operator"]
    assert IMAGE.argv([], ["--help"]) == ["kiln", "--help"]
    assert IMAGE.argv(["python3", "-c"], ["1"]) == ["python3", "-c", "1"]
    assert IMAGE.argv(["id"], []) == ["id"]


def pod(image: str) -> dict[str, object]:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {
            "volumes": [
                {"name": "request", "configMap": {"name": "req"}},
                {"name": "scratch", "emptyDir": {}},
            ],
            "containers": [
                {
                    "name": "builder",
                    "image": image,
                    "command": ["kiln", "build"],
                    "args": ["--request", "/etc/kiln/request.json"],
                    "env": [
                        {"name": "A", "value": "/etc/kiln/request.json"},
                        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    ],
                    "volumeMounts": [
                        {"name": "request", "mountPath": "/etc/kiln"},
                        {"name": "scratch", "mountPath": "/scratch"},
                    ],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
        },
    }


def test_a_pod_in_its_image_keeps_its_paths_and_mounts_its_volumes_there(
    tmp_path: Path,
) -> None:
    spec = in_image(
        pod(LOCAL_PREFIX + "kiln-builder:1"),
        tmp_path,
        {"req": {"request.json": "{}"}},
        {"s": {"k": "secret-value"}},
    )
    assert spec.container is not None
    run = spec.container
    # Nothing is rewritten: the container sees its own paths, as in a real pod.
    assert [*run.command, *run.args] == ["kiln", "build", "--request", "/etc/kiln/request.json"]
    assert run.env == {"A": "/etc/kiln/request.json", "KEY": "secret-value"}
    assert (run.mounts["/etc/kiln"] / "request.json").read_text() == "{}"
    assert run.mounts["/dev/termination-log"] == spec.termination_path
    assert spec.termination_path.exists()
    # emptyDirs are writable by the image's non-root user, as a kubelet makes them.
    assert run.mounts["/scratch"].stat().st_mode & 0o777 == 0o777
    assert spec.fallback_to_logs


def test_in_the_working_tree_the_same_pod_gets_its_paths_rewritten(tmp_path: Path) -> None:
    spec = launch(pod("kiln-builder:1"), tmp_path, {"req": {"request.json": "{}"}}, {}, tmp_path)
    assert spec.container is None
    assert spec.argv[-1] == str(tmp_path / "volumes" / "request" / "request.json")


def test_buildah_builds_in_chroot_isolation_with_the_ca_secret() -> None:
    argv = Engine(Tool.BUILDAH).build_argv(
        REPO, "operator", "kiln-operator:1", {"PYTHON_IMAGE": "base"}, Path("/ca.pem")
    )
    assert argv[:2] == ["buildah", "bud"]
    assert argv[argv.index("--isolation") + 1] == "chroot"
    assert argv[argv.index("--target") + 1] == "operator"
    assert argv[argv.index("--secret") + 1] == "id=ca,src=/ca.pem"
    assert argv[argv.index("--build-arg") + 1] == "PYTHON_IMAGE=base"
    assert argv[-1] == str(REPO)
    docker = Engine(Tool.DOCKER).build_argv(REPO, "builder", "t", {}, Path("/ca.pem"))
    assert docker[:2] == ["docker", "build"]
    assert "--isolation" not in docker


def test_sizes_as_buildah_prints_them() -> None:
    assert parse_size("266 MB") == 266_000_000
    assert parse_size("5.12 GB") == 5_120_000_000
    assert parse_size("812 kB") == 812_000
    with pytest.raises(ValueError, match="unknown size"):
        parse_size("12 parsecs")


def test_the_debian_mirror_is_read_from_apt_sources_in_both_forms(tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
    )
    assert apt_mirror([deb822]) == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text("# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n")
    assert apt_mirror([tmp_path / "missing", one_line]) == "http://other.example/debian"
    assert apt_mirror([]) is None
    # the cache key follows the archive, so a base from another mirror is not reused blindly
    assert base_key("http://a/debian") != base_key(None)


def test_the_tensorrt_script_refuses_an_unknown_mode_and_records_no(tmp_path: Path) -> None:
    script = REPO / "images" / "install-tensorrt.sh"
    bad = subprocess.run(["sh", str(script), "maybe", str(tmp_path), "w.whl"], check=False)
    assert bad.returncode == 2
    done = subprocess.run(
        ["sh", str(script), "no", str(tmp_path), "w.whl"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert (tmp_path / "TENSORRT").read_text().startswith("TensorRT: not installed")


def fake_venv(root: Path, pip_code: int, import_code: int) -> Path:
    """A stand-in venv (fault injection: no real pip runs) whose pip and python exit with
    the given codes, as a build without NVIDIA's index sees them."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for name, code in (("pip", pip_code), ("python", import_code)):
        (bin_dir / name).write_text(f"#!/bin/sh\necho 'ERROR: stand-in {name}'\nexit {code}\n")
        (bin_dir / name).chmod(0o755)
    return root


@pytest.mark.parametrize(
    ("pip_code", "import_code"),
    [(1, 0), (0, 1)],  # the index is unreachable; a stub installs but its libraries are absent
)
def test_tensorrt_that_cannot_be_installed_is_recorded_never_pretended(
    tmp_path: Path, pip_code: int, import_code: int
) -> None:
    script = REPO / "images" / "install-tensorrt.sh"
    venv = fake_venv(tmp_path / "venv", pip_code, import_code)
    auto = subprocess.run(["sh", str(script), "auto", str(venv), "w.whl"], capture_output=True)
    assert auto.returncode == 0
    assert (venv / "TENSORRT").read_text().startswith("TensorRT: NOT installed")
    (venv / "TENSORRT").unlink()
    strict = subprocess.run(["sh", str(script), "yes", str(venv), "w.whl"], capture_output=True)
    assert strict.returncode == 1
    assert not (venv / "TENSORRT").exists()


def test_run_as_non_root_is_checked_as_a_kubelet_checks_it() -> None:
    body = pod("img")
    assert root_refused(body, "10001") is None
    assert root_refused(body, "0") is None  # nothing asked for
    body["spec"]["securityContext"] = {"runAsNonRoot": True}  # type: ignore[index]
    assert root_refused(body, "10001") is None
    assert "runAsNonRoot" in (root_refused(body, "0") or "")
    assert "runAsNonRoot" in (root_refused(body, "root:root") or "")
    container = body["spec"]["containers"][0]  # type: ignore[index]
    container["securityContext"] = {"runAsUser": 10001}
    assert root_refused(body, "0") is None  # the container's own user wins over the image's


def test_the_record_says_which_library_failed_and_why(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path / "venv", 1, 0)
    # What the tensorrt stub packages print when NVIDIA's index cannot be reached (stand-in).
    (venv / "bin" / "pip").write_text(
        "#!/bin/sh\n"
        "echo '      The installation of tensorrt-cu13-libs for version 11.4.0.106 failed.'\n"
        "echo '      urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>'\n"
        "exit 1\n"
    )
    script = REPO / "images" / "install-tensorrt.sh"
    subprocess.run(["sh", str(script), "auto", str(venv), "w.whl"], capture_output=True, check=True)
    record = (venv / "TENSORRT").read_text()
    assert "tensorrt-cu13-libs for version 11.4.0.106 failed: urlopen error" in record, record
