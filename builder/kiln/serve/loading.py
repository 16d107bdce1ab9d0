"""What `kiln serve` serves, and whether it may: pure checks on the recorded result, then the
artifact fetched from storage with its manifest digest verified. A server refuses to start on
anything that is not a selected, verified candidate built for this machine's device type."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.api.errors import KilnInputError
from kiln.api.layout import MODEL_DOCUMENT, RESULT_FILE, STATUS_FILE
from kiln.api.load import parse_document
from kiln.api.select import SERVABLE
from kiln.api.spec import Backend, OptimizedModel
from kiln.api.status import CandidateStatus, OptimizedModelStatus, State, TargetStatus
from kiln.runtime.threads import available_threads
from kiln.storage.artifacts import ArtifactStore
from kiln.storage.objects import Location, Storage, parse_uri


@dataclass(frozen=True)
class Served:
    model: OptimizedModel
    target: TargetStatus
    candidate: CandidateStatus


def pick_target(targets: list[TargetStatus], wanted: str | None, gpu: str | None) -> TargetStatus:
    """The named target, else the one for this machine's GPU, else the CPU target."""
    names = [t.name for t in targets]
    if wanted is not None:
        found = next((t for t in targets if t.name == wanted), None)
        if found is None:
            raise KilnInputError("--target", f"no target {wanted!r} in the result; it has {names}")
        return found
    for name in (gpu, "cpu"):
        found = next((t for t in targets if t.name == name), None)
        if found is not None:
            return found
    raise KilnInputError(
        "--target", f"no target for this machine ({gpu or 'cpu'}); the result has {names}"
    )


def kept_baseline(target: TargetStatus) -> str | None:
    """The baseline, where nothing beat it and it is itself a servable engine (an ONNX source
    measured in ONNX Runtime): keeping it is the decision, so it is what is served. None for
    a PyTorch baseline, which `kiln serve` does not run."""
    baseline = target.candidate(target.baseline) if target.baseline else None
    if baseline is None or baseline.backend not in SERVABLE or baseline.artifact is None:
        return None
    return baseline.name


def check_servable(model: OptimizedModel, target: TargetStatus, gpu: str | None) -> Served:
    where = f"target {target.name}"
    if target.state is not State.OK:
        raise KilnInputError(where, f"was not built ({target.state.value}: {target.reason})")
    chosen = target.selected or kept_baseline(target)
    if chosen is None:
        raise KilnInputError(where, f"has no selected candidate: {target.selection_reason}")
    candidate = target.candidate(chosen)
    if candidate is None or candidate.state is not State.OK:
        raise KilnInputError(where, f"selected candidate {chosen!r} is not built")
    if candidate.accuracy is None or not candidate.accuracy.passed:
        raise KilnInputError(
            f"{where}/{candidate.name}",
            "refusing to serve: its recorded accuracy gate did not pass",
        )
    if candidate.backend not in SERVABLE or candidate.artifact is None:
        raise KilnInputError(f"{where}/{candidate.name}", "has no servable artifact")
    if target.device == "cuda" and target.name != gpu:
        raise KilnInputError(
            f"{where}/{candidate.name}",
            f"built for GPU type {target.name}, but this machine has {gpu or 'no GPU'}",
        )
    return Served(model, target, candidate)


def from_output_dir(folder: Path) -> tuple[OptimizedModel, list[TargetStatus]]:
    """A `kiln optimize --output DIR` folder."""
    try:
        model_doc = json.loads((folder / MODEL_DOCUMENT).read_text())
        status = OptimizedModelStatus.model_validate_json((folder / STATUS_FILE).read_text())
    except OSError as exc:
        raise KilnInputError(str(folder), f"not a kiln optimize output folder: {exc}") from None
    return parse_document(model_doc, str(folder / MODEL_DOCUMENT)), status.targets


def from_result(
    storage: Storage, uri: str, cache_key: str | None
) -> tuple[OptimizedModel, list[TargetStatus]]:
    """A result folder in object storage (what the operator hands a server pod): its key must be
    the one the operator decided on, and it must be complete (manifest present)."""
    loc = parse_uri(uri)
    folder = loc.key.rstrip("/").rsplit("/", 1)[0] if loc.key.endswith(RESULT_FILE) else loc.key
    root_key, _, key = folder.rstrip("/").rpartition("/")
    if cache_key is not None and key != cache_key:
        raise KilnInputError(
            "--result", f"folder key {key!r} is not the expected --cache-key {cache_key!r}"
        )
    # Only manifests and JSON are read here, so the store needs no download folder.
    store = ArtifactStore(storage, Location(loc.scheme, loc.bucket, root_key))
    if store.manifest(key) is None:
        raise KilnInputError("--result", f"{uri} is not a complete result (no manifest)")
    target = TargetStatus.model_validate(store.read_json(key, RESULT_FILE))
    model = parse_document(store.read_json(key, MODEL_DOCUMENT), f"{uri} {MODEL_DOCUMENT}")
    return model, [target]


def companions(name: str) -> list[str]:
    """Files an artifact is loaded with: an OpenVINO IR's weights beside its `.xml`."""
    from kiln.runtime.ov_runner import weights_of

    return [weights_of(Path(name)).name] if name.endswith(".xml") else []


def fetch_artifact(storage: Storage, uri: str, cache_dir: Path) -> Path:
    """A local copy of a candidate's artifact (and the files it is loaded with, beside it),
    each verified against its folder's manifest."""
    loc = parse_uri(uri)
    folder, _, name = loc.key.rpartition("/")
    root, _, key = folder.rpartition("/")
    store = ArtifactStore(storage, Location(loc.scheme, loc.bucket, root), cache_dir)
    if store.manifest(key) is None:
        raise KilnInputError(uri, "artifact is not marked built (no manifest)")
    try:
        for other in companions(name):
            store.fetch(key, other)
        return store.fetch(key, name)
    except RuntimeError as exc:  # digest mismatch: never serve what was not built
        raise KilnInputError(uri, str(exc)) from None


def release(version: str) -> str:
    """`2.15.0+cu132` -> `2.15.0`: CPU and CUDA builds of one release share the package ABI."""
    return version.split("+", 1)[0]


def torch_mismatch(built_with: str | None, here: str) -> str | None:
    """An AOTInductor package links against the libtorch it was compiled with."""
    if built_with is None or release(built_with) == release(here):
        return None
    return f"compiled with torch {built_with}, this server has torch {here}"


def open_runner(
    served: Served, artifact: Path, threads: int | None, compiled_cache: Path | None = None
) -> Any:
    """The runner for the served candidate; a package this machine cannot run is refused
    (KilnInputError) before it is loaded. `compiled_cache`: where a runtime that compiles on
    load (OpenVINO) keeps what it compiled."""
    outputs = served.model.spec.outputs
    device = "cuda:0" if served.target.device == "cuda" else "cpu"
    name = served.candidate.name
    # Sized like the benchmark's runtimes: to the pod's CPU quota, not the node's cores.
    count = available_threads(threads).count
    if served.candidate.backend is Backend.TENSORRT:
        from kiln.runtime.trt_runner import TrtRunner

        return TrtRunner(name, artifact, outputs, device)
    if served.candidate.backend is Backend.AOTINDUCTOR:
        return _aoti_runner(served, artifact, device, count)
    if served.candidate.backend is Backend.OPENVINO:
        from kiln.runtime.ov_runner import InferencePrecision, OpenVinoRunner

        hint = InferencePrecision.of(served.candidate.precision.value)
        # Compiled once per CPU and OpenVINO version, then loaded from the cache on restarts.
        return OpenVinoRunner(name, artifact, outputs, count, hint, compiled_cache)
    from kiln.runtime.ort_runner import OrtRunner

    return OrtRunner(name, artifact, outputs, device, count)


def _aoti_runner(served: Served, artifact: Path, device: str, threads: int) -> Any:
    import torch

    from kiln.runtime.aoti_runner import AotiRunner, IncompatiblePackageError

    where = f"target {served.target.name}/{served.candidate.name}"
    why = torch_mismatch(
        served.target.environment.torch if served.target.environment else None, torch.__version__
    )
    if why is not None:
        raise KilnInputError(where, f"refusing to serve: {why}")
    names = [t.name for t in served.model.spec.inputs]
    try:
        return AotiRunner(served.candidate.name, artifact, names, device, threads)
    except IncompatiblePackageError as exc:
        raise KilnInputError(where, f"refusing to serve: {exc}") from None
