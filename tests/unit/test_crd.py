from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.api.crd import optimizedmodel_crd, render_crds

CRDS = Path(__file__).parents[2] / "crds"


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        found += walk(sub, f"{path}.{name}")
    if "items" in schema:
        found += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += walk(schema["additionalProperties"], f"{path}{{}}")
    return found


def test_checked_in_crds_match_the_typed_api() -> None:
    expected = render_crds()
    on_disk = {p.name: p.read_text() for p in CRDS.glob("*.yaml")}
    assert on_disk == expected, "crds/ drifted: run `kiln crds --output crds` and commit"


def test_schema_is_structural() -> None:
    version = optimizedmodel_crd()["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    for path, node in walk(root):
        assert not {"$ref", "anyOf", "title"} & set(node), path
        # int-or-string is the one structural node without a type (serving.replicas)
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if node.get("type") == "object" and "properties" in node:
            assert "additionalProperties" not in node, path
    assert version["subresources"] == {"status": {}}


def test_list_maps_and_validations() -> None:
    root = optimizedmodel_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    status = root["properties"]["status"]["properties"]
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]
    assert status["targets"]["x-kubernetes-list-type"] == "map"
    spec = root["properties"]["spec"]
    assert spec["required"] == ["source", "inputs", "outputs"]
    rules = [v["rule"] for v in spec["x-kubernetes-validations"]]
    assert any("calibration" in r for r in rules)
    accuracy = spec["properties"]["accuracy"]
    assert [v["rule"] for v in accuracy["x-kubernetes-validations"]] == [
        "!has(self.uri) || !has(self.holdout)",
        "!has(self.holdout) || self.holdout <= (has(self.samples) ? self.samples : 8)",
    ]
    shape = spec["properties"]["inputs"]["items"]
    assert shape["x-kubernetes-validations"][0]["fieldPath"] == ".shape"
    assert spec["properties"]["selection"]["properties"]["minSpeedup"]["exclusiveMinimum"] is True


def test_printer_columns() -> None:
    columns = optimizedmodel_crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    names = [c["name"] for c in columns]
    assert names == ["Phase", "Targets", "Best", "Speedup", "Savings", "Ready", "Age"]
