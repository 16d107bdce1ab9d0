"""The pod executor: the one simulated part is the container runtime. For pods labelled
kiln.dev/component=builder that kwok has started on a simulated node, run the container's
command on this machine (same args and env, mounted ConfigMaps/Secrets materialised into a
folder and their mount paths rewritten), then finish the pod with that exit code and
termination message, as a kubelet would. Real Jobs, scheduling and garbage collection see it.

    python -m tests.cluster.executor --kubeconfig K --work DIR [--ready-file F]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tests.images.run import exit_code

if TYPE_CHECKING:
    from tests.images.engine import Engine
    from tests.images.run import Container

T = TypeVar("T")

SELECTOR = "kiln.dev/component=builder"
FALLBACK_BYTES = 2048  # what Kubernetes keeps of a log as a termination message fallback


# Pods naming an image of this machine's own store (`make images` builds them; no real
# cluster pulls a `localhost/` name) run in that image instead of in the working tree.
LOCAL_PREFIX = "localhost/"


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    termination_path: Path
    fallback_to_logs: bool
    container: Container | None = None  # set when the pod runs in its image


def rewrite(value: str, mounts: dict[str, Path]) -> str:
    """Container paths under a mount point become the materialised folder's paths."""
    for mount_path, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(local) + value[len(mount_path.rstrip("/")) :]
    return value


def materialise(
    pod: dict[str, Any],
    container: dict[str, Any],
    folder: Path,
    configmaps: dict[str, dict[str, str]],
    secrets: dict[str, dict[str, str]],
) -> dict[str, Path]:
    """Write the container's ConfigMap/Secret volumes under `folder`; mountPath -> local path."""
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"], {})
        local = folder / "volumes" / mount["name"]
        local.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            data = configmaps.get(volume["configMap"]["name"], {})
        elif "secret" in volume:
            data = secrets.get(volume["secret"]["secretName"], {})
        else:
            data = {}  # emptyDir and friends: an empty folder
        for key, text in data.items():
            (local / key).write_text(text)
        mounts[mount["mountPath"]] = local
    return mounts


def launch(
    pod: dict[str, Any],
    folder: Path,
    configmaps: dict[str, dict[str, str]],
    secrets: dict[str, dict[str, str]],
    venv_bin: Path,
) -> Launch:
    """Translate a pod's (first) container into a local command (pure but for the volume files)."""
    container, mounts, termination = _mounted(pod, folder, configmaps, secrets)
    env = {k: rewrite(v, mounts) for k, v in container_env(container, configmaps, secrets).items()}
    argv = [rewrite(a, mounts) for a in [*container.get("command", []), *container.get("args", [])]]
    if argv and "/" not in argv[0] and (venv_bin / argv[0]).exists():
        argv[0] = str(venv_bin / argv[0])  # the project's own `kiln`, as the image would have it
    return Launch(argv, env, termination, _fallback_to_logs(container))


def _mounted(
    pod: dict[str, Any],
    folder: Path,
    configmaps: dict[str, dict[str, str]],
    secrets: dict[str, dict[str, str]],
) -> tuple[dict[str, Any], dict[str, Path], Path]:
    """The pod's first container, its volumes written under `folder` (mountPath -> local
    path) with the termination message file among them, and that file's local path."""
    container = pod["spec"]["containers"][0]
    mounts = materialise(pod, container, folder, configmaps, secrets)
    termination = folder / "termination-log"
    # The container's termination message file is redirected like a mount.
    mounts[container.get("terminationMessagePath", "/dev/termination-log")] = termination
    return container, mounts, termination


def _fallback_to_logs(container: dict[str, Any]) -> bool:
    return bool(container.get("terminationMessagePolicy") == "FallbackToLogsOnError")


def container_env(
    container: dict[str, Any],
    configmaps: dict[str, dict[str, str]],
    secrets: dict[str, dict[str, str]],
) -> dict[str, str]:
    """The container's environment: envFrom sources first, then `env` items over them."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            env.update(secrets.get(source["secretRef"]["name"], {}))
        if "configMapRef" in source:
            env.update(configmaps.get(source["configMapRef"]["name"], {}))
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif ref := item.get("valueFrom", {}).get("secretKeyRef"):
            env[item["name"]] = secrets.get(ref["name"], {}).get(ref["key"], "")
        elif ref := item.get("valueFrom", {}).get("configMapKeyRef"):
            env[item["name"]] = configmaps.get(ref["name"], {}).get(ref["key"], "")
    return env


def in_image(
    pod: dict[str, Any],
    folder: Path,
    configmaps: dict[str, dict[str, str]],
    secrets: dict[str, dict[str, str]],
) -> Launch:
    """The pod's (first) container as a run of its own image: volumes bind-mounted at their
    mount paths and the termination message file where the container writes it, so no path
    is rewritten; the image's entrypoint, user and working directory apply."""
    from tests.images.run import Container

    container, mounts, termination = _mounted(pod, folder, configmaps, secrets)
    termination.touch()  # a bind mount needs its source to exist
    for local in mounts.values():
        # Writable by the image's own user, like a kubelet's emptyDir (and the message file).
        local.chmod(0o777 if local.is_dir() else 0o666)
    run = Container(
        image=container["image"],
        command=list(container.get("command", [])),
        args=list(container.get("args", [])),
        env=container_env(container, configmaps, secrets),
        mounts=mounts,
        workdir=container.get("workingDir", ""),
    )
    return Launch(
        [*run.command, *run.args], run.env, termination, _fallback_to_logs(container), run
    )


def root_refused(pod: dict[str, Any], image_user: str) -> str | None:
    """A kubelet's check of `runAsNonRoot` against the user the container would run as (the
    container's or pod's `runAsUser`, else the image's)."""
    container = pod["spec"]["containers"][0]
    contexts = [container.get("securityContext") or {}, pod["spec"].get("securityContext") or {}]
    non_root = next((c["runAsNonRoot"] for c in contexts if "runAsNonRoot" in c), False)
    user = next((str(c["runAsUser"]) for c in contexts if "runAsUser" in c), image_user)
    if non_root and user.split(":")[0] in ("", "0", "root"):
        return f"container has runAsNonRoot and image will run as root (user {user or '0'!r})"
    return None


def finished_status(
    pod: dict[str, Any], code: int, message: str, started: str, now: str
) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    return {
        "phase": "Succeeded" if code == 0 else "Failed",
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "PodCompleted",
                "lastTransitionTime": now,
            }
        ],
        "containerStatuses": [
            {
                "name": container["name"],
                "image": container.get("image", ""),
                "ready": False,
                "restartCount": 0,
                "started": False,
                "imageID": "",
                "state": {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else "Error",
                        "message": message,
                        "startedAt": started,
                        "finishedAt": now,
                    }
                },
            }
        ],
    }


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _retried(call: Callable[[], T], what: str, seconds: float = 180) -> T:
    """As a kubelet does through an API server restart: retry until it answers. A 404 (the
    object is gone) or the deadline ends it."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except Exception as exc:
            if getattr(exc, "status", None) == 404 or time.monotonic() > deadline:
                raise
            print(f"executor: {what}: {exc}; retrying", flush=True)
            time.sleep(1)


class Executor:
    def __init__(self, kubeconfig: Path, work: Path) -> None:
        from kubernetes import client, config

        self.api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.work = work
        self.venv_bin = Path(sys.executable).parent
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.engine: Engine | None = None  # the container tool, found at the first image pod

    def _data(self, kind: str, namespace: str, name: str) -> dict[str, str]:
        from kubernetes.client.exceptions import ApiException

        def read() -> dict[str, str]:
            try:
                if kind == "secret":
                    obj = self.core.read_namespaced_secret(name, namespace)
                    return {k: base64.b64decode(v).decode() for k, v in (obj.data or {}).items()}
                return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
            except ApiException as exc:
                if exc.status == 404:  # a missing optional source: as a kubelet, run without it
                    return {}
                raise

        return _retried(read, f"read {kind} {namespace}/{name}")

    def _refs(
        self, pod: dict[str, Any]
    ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        ns = pod["metadata"]["namespace"]
        cms: set[str] = set()
        secrets: set[str] = set()
        for v in pod["spec"].get("volumes", []):
            if "configMap" in v:
                cms.add(v["configMap"]["name"])
            if "secret" in v:
                secrets.add(v["secret"]["secretName"])
        for c in pod["spec"]["containers"]:
            for s in c.get("envFrom", []):
                if "secretRef" in s:
                    secrets.add(s["secretRef"]["name"])
                if "configMapRef" in s:
                    cms.add(s["configMapRef"]["name"])
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    secrets.add(ref["secretKeyRef"]["name"])
                if "configMapKeyRef" in ref:
                    cms.add(ref["configMapKeyRef"]["name"])
        return (
            {n: self._data("configmap", ns, n) for n in cms},
            {n: self._data("secret", ns, n) for n in secrets},
        )

    def run_pod(self, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        folder = self.work / uid
        folder.mkdir(parents=True, exist_ok=True)
        started = _now()
        configmaps, secrets = self._refs(pod)
        log = folder / "container.log"
        if pod["spec"]["containers"][0].get("image", "").startswith(LOCAL_PREFIX):
            spec = in_image(pod, folder, configmaps, secrets)
            code = self._run_in_image(pod, spec, log)
        else:
            spec = launch(pod, folder, configmaps, secrets, self.venv_bin)
            code = self._run_in_tree(spec, folder, log)
        message = spec.termination_path.read_text() if spec.termination_path.exists() else ""
        if not message and code != 0 and spec.fallback_to_logs:
            message = log.read_bytes()[-FALLBACK_BYTES:].decode(errors="replace")
        status = finished_status(pod, code, message, started, _now())
        name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
        _retried(
            lambda: self.core.patch_namespaced_pod_status(name, namespace, {"status": status}),
            f"finish pod {namespace}/{name}",
        )

    def _run_in_tree(self, spec: Launch, folder: Path, log: Path) -> int:
        env = {**os.environ, **spec.env}
        env.pop("KUBECONFIG", None)  # builders never talk to the API server
        try:
            with log.open("wb") as out:
                code = subprocess.run(
                    spec.argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=folder,
                    env=env,
                    check=False,
                ).returncode
        except OSError as exc:
            code = 127
            log.write_text(f"cannot run {spec.argv[:1]}: {exc}\n")
        return exit_code(code)

    def _run_in_image(self, pod: dict[str, Any], spec: Launch, log: Path) -> int:
        from tests.images.engine import Engine, NoEngineError
        from tests.images.run import image_config, run

        assert spec.container is not None
        name = pod["metadata"]["name"]
        try:
            engine = self.engine = self.engine or Engine.detect()
            if not engine.can_run or not engine.exists(spec.container.image):
                raise NoEngineError(f"image {spec.container.image} is not in the local store")
        except NoEngineError as exc:
            log.write_text(f"cannot run pod {name} in its image: {exc}\n")
            spec.termination_path.write_text(f"cannot run in image: {exc}")
            return 127  # what a runtime reports for a command it cannot start
        refused = root_refused(pod, image_config(engine, spec.container.image).user)
        if refused:  # what a kubelet reports as CreateContainerConfigError
            log.write_text(refused + "\n")
            spec.termination_path.write_text(refused)
            return 126
        print(f"executor: pod {name}: in image {spec.container.image}", flush=True)
        with log.open("wb") as out:
            return run(engine, spec.container, stdout=out)

    def loop(self, ready_file: Path | None) -> None:
        from kubernetes import watch

        if ready_file is not None:
            ready_file.write_text("ready\n")
        while True:
            try:
                self._watch_once(watch)
            except Exception as exc:  # an expired or not-yet-ready watch: re-list and go on
                print(f"executor: watch ended ({exc}); restarting", flush=True)
                time.sleep(1)

    def _watch_once(self, watch: Any) -> None:
        # Pods already running when the watch (re)starts are in the initial ADDED events.
        stream = watch.Watch().stream(
            self.core.list_pod_for_all_namespaces, label_selector=SELECTOR, timeout_seconds=300
        )
        for event in stream:
            pod = self.api.sanitize_for_serialization(event["object"])
            if not self._runnable(pod):
                continue
            with self.lock:
                if pod["metadata"]["uid"] in self.seen:
                    continue
                self.seen.add(pod["metadata"]["uid"])
            threading.Thread(target=self._guarded, args=(pod,), daemon=True).start()

    def _guarded(self, pod: dict[str, Any]) -> None:
        try:
            self.run_pod(pod)
        except Exception as exc:
            print(f"executor: pod {pod['metadata']['name']}: {exc}", flush=True)

    @staticmethod
    def _runnable(pod: dict[str, Any]) -> bool:
        status = pod.get("status", {})
        running = any(
            "running" in (cs.get("state") or {}) for cs in status.get("containerStatuses", [])
        )
        return (
            status.get("phase") == "Running"
            and running
            and bool(pod["spec"].get("nodeName"))
            and not pod["metadata"].get("deletionTimestamp")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    Executor(args.kubeconfig, args.work).loop(args.ready_file)


if __name__ == "__main__":
    main()
