"""Dynamic axes beyond the batch, the pure parts: the spec's rules and their error lines, the
lengths the export traces at, the benchmark's real samples cut or repeated to a length, the
TensorRT profile, calibration shards of a sequence model, and a static spec left as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kiln.api.errors import InvalidSpecError, KilnInputError
from kiln.api.keys import cache_key
from kiln.api.spec import OptimizedModelSpec
from kiln.api.status import shape_text
from kiln.builder.calibration import check_shard
from kiln.builder.feeds import fit_lengths, random_feeds, trace_lengths
from kiln.builder.tensorrt import build_args
from tests.fixtures.specs import minimal_spec, spec_of

SEQ = {"axis": 1, "name": "seq", "min": 8, "opt": 64, "max": 128}


def text_spec(**over: Any) -> OptimizedModelSpec:
    ids = {"name": "input_ids", "dtype": "int64", "shape": [-1, -1], "dynamic": [SEQ]}
    mask = {**ids, "name": "attention_mask"}
    return minimal_spec(inputs=[ids, mask], outputs=["hidden", "pooled"], **over)


def refused(body_inputs: list[dict[str, Any]], **over: Any) -> str:
    with pytest.raises(InvalidSpecError) as info:
        minimal_spec(inputs=body_inputs, **over)
    return str(info.value)


def test_axes_that_share_a_name_are_one_length() -> None:
    spec = text_spec()
    assert list(spec.dims()) == ["seq"]
    assert spec.benchmark_lengths() == [{"seq": 64}]
    assert spec.inputs[0].concrete_shape(4) == (4, 64)
    assert spec.inputs[1].concrete_shape(2, {"seq": 9}) == (2, 9)
    assert spec.inputs[0].wanted() == ["N", "8..128"]


def test_an_axis_without_a_name_is_its_own_and_opt_defaults_to_max() -> None:
    spec = minimal_spec(
        inputs=[
            {
                "name": "audio",
                "shape": [-1, 80, -1],
                "dynamic": [{"axis": 2, "min": 10, "max": 3000}],
            }
        ]
    )
    assert list(spec.dims()) == ["audio_2"]
    assert spec.inputs[0].concrete_shape(1) == (1, 80, 3000)


def test_benchmark_shapes_fill_unlisted_axes_with_their_opt() -> None:
    two = {**SEQ, "name": "frames", "axis": 2}
    spec = minimal_spec(
        inputs=[{"name": "x", "shape": [-1, -1, -1], "dynamic": [SEQ, two]}],
        benchmark={"shapes": [{"seq": 16}, {"frames": 100, "seq": 8}]},
    )
    assert spec.benchmark_lengths() == [{"seq": 16, "frames": 64}, {"seq": 8, "frames": 100}]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"shape": [-1, -1]}, "spec.inputs[0].shape: axis 1 is -1 but has no range; add dynamic"),
        (
            {"shape": [-1, 4], "dynamic": [SEQ]},
            "dynamic[0].axis: 1 is not a -1 axis of shape [-1, 4]",
        ),
        ({"shape": [-1, -1], "dynamic": [SEQ, SEQ]}, "dynamic[1].axis: axis 1 is listed twice"),
        ({"shape": [-1, -1], "dynamic": [{**SEQ, "max": 8}]}, "min 8 must be below max 8"),
        ({"shape": [-1, -1], "dynamic": [{**SEQ, "opt": 200}]}, "opt 200 must lie in [min, max]"),
        ({"shape": [-1, -1], "dynamic": [{**SEQ, "name": "batch"}]}, "the batch axis's name"),
        ({"shape": [-1, -1], "dynamic": [{**SEQ, "name": "s q"}]}, "expected an identifier"),
        ({"shape": [-1, 0]}, "axis 1 is 0: dimensions must be positive, or -1"),
    ],
)
def test_a_bad_dynamic_axis_names_its_field(tensor: dict[str, Any], message: str) -> None:
    assert message in refused([{"name": "x", **tensor}])


def test_one_name_with_two_ranges_is_refused() -> None:
    ids = {"name": "input_ids", "shape": [-1, -1], "dynamic": [SEQ]}
    mask = {"name": "attention_mask", "shape": [-1, -1], "dynamic": [{**SEQ, "max": 256}]}
    message = refused([ids, mask])
    assert "inputs[1].dynamic[0]: 'seq' is min 8, opt 64, max 256 here" in message


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ([{"seq": 200}], "benchmark.shapes[0]: seq: 200 is outside its range [8, 128]"),
        ([{"seq": 16}, {"sq": 16}], "benchmark.shapes[1]: 'sq' is not a dynamic axis"),
    ],
)
def test_bad_benchmark_shapes_name_their_field(shapes: list[Any], message: str) -> None:
    with pytest.raises(InvalidSpecError) as info:
        text_spec(benchmark={"shapes": shapes})
    assert message in str(info.value)


def test_benchmark_shapes_on_a_static_model_are_refused() -> None:
    with pytest.raises(InvalidSpecError, match="no input has a dynamic axis beyond the batch"):
        minimal_spec(benchmark={"shapes": [{"seq": 16}]})


def test_a_static_spec_keeps_its_wire_form_and_its_keys() -> None:
    """No new field appears in a static spec's wire form, so no stored result is rebuilt."""
    spec = minimal_spec()
    wire = spec.inputs[0].to_wire()
    assert wire == {"name": "x", "shape": [-1, 3], "dtype": "float32"}
    assert "shapes" not in spec.benchmark.to_wire()
    assert cache_key("x", inputs=[wire]) == cache_key("x", inputs=[dict(wire)])
    assert spec.benchmark_lengths() == [{}]


def test_trace_lengths_are_in_range_and_apart_from_each_other_and_the_batch() -> None:
    # Both opts collide: frames' with the batch, seq's with frames' only free length.
    tight = {"axis": 2, "name": "frames", "min": 1, "opt": 2, "max": 3}
    wide = {**SEQ, "min": 2, "opt": 3}
    spec = minimal_spec(inputs=[{"name": "x", "shape": [-1, -1, -1], "dynamic": [wide, tight]}])
    lengths = trace_lengths(spec, batch=2)
    assert lengths["frames"] == 3  # the only length of 1..3 that is neither 1 nor the batch
    assert lengths["seq"] not in (1, 2, 3)
    assert 2 <= lengths["seq"] <= 128


def test_fit_lengths_cuts_and_repeats_real_samples() -> None:
    spec = text_spec()
    feeds = {
        "input_ids": np.arange(10).reshape(1, 10),
        "attention_mask": np.ones((1, 10), np.int64),
    }
    short = fit_lengths(feeds, spec.inputs, {"seq": 4})
    assert short["input_ids"].tolist() == [[0, 1, 2, 3]]
    long = fit_lengths(feeds, spec.inputs, {"seq": 23})
    assert long["input_ids"].shape == (1, 23)
    assert long["input_ids"][0, 10:20].tolist() == list(range(10))
    assert long["attention_mask"].min() == 1  # a mask stays a mask


def test_the_tensorrt_profile_spans_each_range() -> None:
    spec = text_spec(batchSizes=[1, 8])
    args = build_args(spec, Path("m.onnx"), Path("e.plan"), Path("t.cache"))
    profiles = [args[i + 1] for i, a in enumerate(args) if a == "--shape"]
    assert profiles == ["input_ids=1x8:8x64:8x128", "attention_mask=1x8:8x64:8x128"]


def test_random_feeds_follow_the_lengths() -> None:
    feeds = random_feeds(text_spec().inputs, 3, seed=0, lengths={"seq": 9})
    assert feeds["input_ids"].shape == feeds["attention_mask"].shape == (3, 9)


def shard(path: Path, ids: np.ndarray, mask: np.ndarray) -> Path:
    np.savez(path, input_ids=ids, attention_mask=mask)
    return path


def test_calibration_shards_hold_one_length_in_range(tmp_path: Path) -> None:
    spec = text_spec()
    ones = np.ones((4, 32), np.int64)
    assert check_shard(shard(tmp_path / "a.npz", ones, ones), "calibration", spec) == 4
    long = np.ones((4, 200), np.int64)
    with pytest.raises(KilnInputError, match=r"expected \['N', '8\.\.128'\]"):
        check_shard(shard(tmp_path / "b.npz", long, long), "calibration", spec)
    with pytest.raises(KilnInputError, match="'seq' is 32 in 'input_ids' but 16 in"):
        check_shard(shard(tmp_path / "c.npz", ones, ones[:, :16]), "calibration", spec)


def test_shape_text_shows_the_lengths_only_where_there_are_some() -> None:
    assert shape_text(8, None) == "8"
    assert shape_text(8, {"seq": 16}) == "8 (seq 16)"


def test_a_spec_body_with_dynamic_axes_round_trips() -> None:
    spec = text_spec()
    again = spec_of(spec.to_wire())
    assert again == spec


def test_an_unnamed_axis_of_an_onnx_style_input_gets_an_identifier() -> None:
    spec = minimal_spec(
        inputs=[
            {"name": "input.1", "shape": [-1, -1], "dynamic": [{"axis": 1, "min": 2, "max": 9}]}
        ]
    )
    assert list(spec.dims()) == ["input_1_1"]
