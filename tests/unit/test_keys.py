from __future__ import annotations

from kiln.api.keys import cache_key, canonical


def test_key_is_stable_and_order_independent() -> None:
    a = cache_key("onnx", model="sha256:1", settings={"opset": 18, "inputs": [1, 2]})
    b = cache_key("onnx", settings={"inputs": [1, 2], "opset": 18}, model="sha256:1")
    assert a == b
    assert a.startswith("onnx-")
    assert len(a) == len("onnx-") + 24


def test_every_part_changes_the_key() -> None:
    base = {"model": "sha256:1", "precision": "int8", "gpu": "NVIDIA-L4", "trt": "10.3"}
    key = cache_key("trt", **base)
    for name in base:
        changed = dict(base, **{name: base[name] + "x"})
        assert cache_key("trt", **changed) != key, name
    assert cache_key("qdq", **base) != key


def test_canonical_json_sorts_keys() -> None:
    assert canonical({"b": 1, "a": [2, {"d": 1, "c": 0}]}) == '{"a":[2,{"c":0,"d":1}],"b":1}'
