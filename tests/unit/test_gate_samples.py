"""Held-out gates: which samples the accuracy gates run on, and that the quantizer never
reads them. Sample i of every set here holds the value i, so a feed says where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.api.errors import KilnInputError
from kiln.api.load import parse_document
from kiln.api.spec import OptimizedModelSpec
from kiln.api.status import GateData
from kiln.builder.calibration import (
    fetch_calibration,
    fetch_validation,
    iter_samples,
    take_samples,
)
from kiln.builder.context import BuildContext
from kiln.builder.gate_samples import evenly_spaced, gate_set, plan, plan_split
from kiln.builder.progress import SilentReporter
from kiln.runtime.base import Feeds
from kiln.storage.artifacts import ArtifactStore
from kiln.storage.objects import Storage, parse_uri


def spec_of(**changes: Any) -> OptimizedModelSpec:
    spec: dict[str, Any] = {
        "source": {"uri": "m.onnx"},
        "inputs": [{"name": "x", "shape": [-1, 2]}],
        "outputs": ["y"],
        "precisions": ["fp32", "int8"],
        "calibration": {"uri": "cal", "samples": 16},
        "accuracy": {"samples": 4},
    }
    spec.update(changes)
    document = {"apiVersion": "kiln.dev/v1alpha1", "kind": "OptimizedModel"}
    return parse_document({**document, "metadata": {"name": "m"}, "spec": spec}, "x").spec


def write_set(folder: Path, count: int, shards: int = 2, first: int = 0) -> None:
    """`count` samples whose values are their position (plus `first`), in `shards` shards."""
    folder.mkdir(parents=True, exist_ok=True)
    values = np.arange(first, first + count, dtype=np.float32)
    for i, part in enumerate(np.array_split(values, shards)):
        np.savez(folder / f"shard-{i}.npz", x=np.repeat(part[:, None], 2, axis=1))


def context(root: Path, spec: OptimizedModelSpec) -> BuildContext:
    from kiln.api.spec import OptimizedModel

    model = OptimizedModel.model_validate({"metadata": {"name": "m"}, "spec": spec.to_wire()})
    storage = Storage()
    return BuildContext(
        model=model,
        base_dir=root,
        storage=storage,
        artifacts=ArtifactStore(storage, parse_uri(str(root / "artifacts"))),
        work_dir=root / "work",
        cache_dir=root / "cache",
        reporter=SilentReporter(),
    )


def ids(samples: list[Feeds]) -> list[int]:
    return [int(s["x"][0, 0]) for s in samples]


def test_evenly_spaced_is_deterministic_distinct_and_spread() -> None:
    picked = evenly_spaced(32, 4)
    assert picked == (4, 12, 20, 28)
    assert evenly_spaced(32, 4) == picked
    for available in (1, 7, 16, 33, 1000):
        for count in {0, 1, min(3, available), available // 2, available}:
            got = evenly_spaced(available, count)
            assert len(set(got)) == count
            assert all(0 <= i < available for i in got)
    # Every part of the set is represented: both halves of a 2-shard set.
    assert min(evenly_spaced(100, 8)) < 50 < max(evenly_spaced(100, 8))
    with pytest.raises(ValueError, match="cannot pick 5 of 4"):
        evenly_spaced(4, 5)


def test_split_holds_out_and_calibrates_on_the_rest(tmp_path: Path) -> None:
    spec = spec_of()
    write_set(tmp_path / "cal", 32)
    ctx = context(tmp_path, spec)
    cal = fetch_calibration(ctx)
    split = plan(spec, cal, None)
    assert split is not None
    assert split.held_out == (4, 12, 20, 28)
    assert split.calibrate == 16
    calibrated = ids(list(iter_samples(cal, spec, split.calibrate, split.skip)))
    assert len(calibrated) == 16
    assert not set(calibrated) & set(split.held_out)
    assert calibrated == [i for i in range(32) if i not in split.held_out][:16]
    gate = gate_set(spec, cal, None, split)
    assert gate.data is GateData.HELD_OUT
    assert ids(gate.samples) == [4, 12, 20, 28]
    assert gate.source == "held out 4 of 32 calibration samples (never calibrated on)"
    assert gate.status(None).samples == 4


def test_split_falls_back_to_fewer_calibration_samples_down_to_half() -> None:
    split = plan_split(available=16, asked=16, holdout=4)
    assert split.calibrate == 12
    assert "calibrated on the other 12, not the 16 asked for" in split.describe()
    assert plan_split(available=16, asked=16, holdout=8).calibrate == 8
    with pytest.raises(KilnInputError) as info:
        plan_split(available=16, asked=16, holdout=9)
    assert info.value.where == "spec.accuracy.holdout"
    assert "leaves 7 to calibrate on, under half of calibration.samples (16)" in str(info.value)


def test_holdout_error_comes_from_plan_before_anything_is_built(tmp_path: Path) -> None:
    spec = spec_of(calibration={"uri": "cal", "samples": 16}, accuracy={"samples": 8})
    write_set(tmp_path / "cal", 16)
    cal = fetch_calibration(context(tmp_path, spec))
    assert plan(spec, cal, None) is not None  # 8 left: exactly half
    write_set(tmp_path / "cal20", 20)
    spec = spec_of(calibration={"uri": "cal20", "samples": 20}, accuracy={"samples": 16})
    cal = fetch_calibration(context(tmp_path, spec))
    with pytest.raises(KilnInputError, match=r"spec\.accuracy\.holdout: holding out 16 of the 20"):
        plan(spec, cal, None)


def test_in_sample_without_int8_and_noise(tmp_path: Path) -> None:
    write_set(tmp_path / "cal", 32)
    in_sample = spec_of(accuracy={"samples": 4, "holdout": 0})
    cal = fetch_calibration(context(tmp_path, in_sample))
    split = plan(in_sample, cal, None)
    assert split is not None
    assert split.held_out == ()
    gate = gate_set(in_sample, cal, None, split)
    assert gate.data is GateData.IN_SAMPLE
    assert ids(gate.samples) == [0, 1, 2, 3]
    assert "accuracy.holdout: 0" in gate.source

    no_int8 = spec_of(precisions=["fp32"])
    assert plan(no_int8, cal, None) is None  # nothing is calibrated: nothing to hold out
    gate = gate_set(no_int8, cal, None, None)
    assert gate.data is GateData.CALIBRATION
    assert ids(gate.samples) == [0, 1, 2, 3]

    noise = spec_of(precisions=["fp32"], calibration=None)
    gate = gate_set(noise, None, None, None)
    assert gate.data is GateData.NOISE
    assert len(gate.samples) == 4


def test_validation_set_is_what_the_gates_run_on(tmp_path: Path) -> None:
    spec = spec_of(accuracy={"samples": 4, "uri": "val"})
    write_set(tmp_path / "cal", 32)
    write_set(tmp_path / "val", 8, shards=1, first=1000)
    ctx = context(tmp_path, spec)
    cal, val = fetch_calibration(ctx), fetch_validation(ctx)
    assert val is not None
    split = plan(spec, cal, val)
    assert split is not None
    assert split.held_out == ()  # nothing of the calibration set is withheld
    assert split.calibrate == 16
    gate = gate_set(spec, cal, val, split)
    assert gate.data is GateData.VALIDATION
    assert ids(gate.samples) == [1001, 1003, 1005, 1007]
    assert gate.source == f"validation set {(tmp_path / 'val').as_uri()} (4 samples)"
    assert gate.identity["set"] == val.digest
    assert fetch_validation(context(tmp_path, spec_of())) is None


def test_take_samples_keeps_order_and_copies(tmp_path: Path) -> None:
    write_set(tmp_path / "cal", 10, shards=3)
    spec = spec_of(calibration={"uri": "cal", "samples": 10})
    cal = fetch_calibration(context(tmp_path, spec))
    picked = take_samples(cal, spec, [9, 0, 5])
    assert ids(picked) == [9, 0, 5]
    assert all(s["x"].base is None for s in picked)


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        (
            {"z": np.zeros((4, 2), np.float32)},
            "no array named 'x' (spec.inputs[0]); it holds ['z']",
        ),
        (
            {"x": np.zeros((4, 3), np.float32)},
            "array 'x' has shape [4, 3], expected ['N', 2] from spec.inputs[0].shape",
        ),
        ({"x": np.zeros((4, 2, 1), np.float32)}, "array 'x' has shape [4, 2, 1]"),
        (
            {"x": np.zeros((4, 2), np.float64)},
            "array 'x' has dtype float64, expected float32 from spec.inputs[0].dtype",
        ),
        (
            {"x": np.array([[0, np.nan], [np.inf, 1]], np.float32)},
            "array 'x' holds 2 NaN or infinite value(s)",
        ),
    ],
)
def test_a_validation_set_that_does_not_match_names_accuracy_uri(
    tmp_path: Path, arrays: dict[str, Any], expected: str
) -> None:
    (tmp_path / "val").mkdir()
    np.savez(tmp_path / "val" / "shard-0.npz", **arrays)
    spec = spec_of(accuracy={"samples": 2, "uri": "val"})
    with pytest.raises(KilnInputError) as info:
        fetch_validation(context(tmp_path, spec))
    assert info.value.where.startswith("spec.accuracy.uri ("), info.value.where
    assert expected in info.value.message
    assert info.value.exit_code == 2


def test_a_validation_set_too_small_or_empty(tmp_path: Path) -> None:
    write_set(tmp_path / "val", 3, shards=1)
    with pytest.raises(KilnInputError, match=r"spec\.accuracy\.samples: asks for 4 samples but"):
        fetch_validation(context(tmp_path, spec_of(accuracy={"samples": 4, "uri": "val"})))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KilnInputError, match=r"spec\.accuracy\.uri \(.*no \.npz shards"):
        fetch_validation(context(tmp_path, spec_of(accuracy={"samples": 4, "uri": "empty"})))


def test_the_quantizer_never_reads_a_held_out_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calibration reader prepare hands the quantizer, drained: no held-out sample in it,
    and the Q/DQ model's key changes with the holdout."""
    from kiln.builder import prepare
    from kiln.builder.fetch import FetchedSource

    read: list[list[int]] = []

    def fake_quantize(model: Path, out: Path, samples: Any, *args: Any) -> None:
        read.append(ids(list(samples())))  # a fresh pass over the set per call
        out.write_bytes(b"qdq")

    monkeypatch.setattr(prepare, "quantize_qdq", fake_quantize)  # ONNX Runtime's
    monkeypatch.setattr(prepare, "quantize_qdq_nncf", fake_quantize)  # NNCF's, the default
    write_set(tmp_path / "cal", 32)
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    onnx = prepare.ModelArtifact("onnx-0", tmp_path / "m.onnx", "file:///m.onnx", False)
    keys = []
    for holdout in (4, 2):
        spec = spec_of(accuracy={"samples": 4, "holdout": holdout})
        ctx = context(tmp_path, spec)
        cal = fetch_calibration(ctx)
        split = plan(spec, cal, None)
        gate = gate_set(spec, cal, None, split)
        source = FetchedSource("file:///m.onnx", tmp_path / "m.onnx", "sha256:0")
        prepared = prepare.Prepared(source, None, onnx, cal, gate, [], split)
        prepare._quantize(ctx, prepared)
        assert prepared.qdq is not None
        assert prepared.qdq_error is None
        keys.append(prepared.qdq.key)
        assert len(read[-1]) == 16
        assert not set(read[-1]) & set(ids(prepared.samples)), (read[-1], prepared.samples)
    assert read[0] != read[1]
    assert keys[0] != keys[1]
