"""The OptimizedModel CRD, generated from the pydantic models: the typed API is the single
source of the schema (`kiln crds --output crds/`; a test fails when crds/ drifts)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from kiln.api.spec import API_GROUP, API_VERSION, KIND, PLURAL, OptimizedModelSpec
from kiln.api.status import OptimizedModelStatus

SINGULAR = "optimizedmodel"
SHORT_NAMES = ["om", "oms"]
CRD_NAME = f"{PLURAL}.{API_GROUP}"

# Lists of objects that carry a unique key are list-maps: server-side apply and strategic
# merges then address entries by key instead of replacing the whole list.
_LIST_MAP_KEYS = {"conditions": "type", "targets": "name", "candidates": "name", "outputs": "name"}
_KEEP = {
    "type",
    "properties",
    "items",
    "required",
    "description",
    "enum",
    "default",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "maxProperties",
    "pattern",
    "additionalProperties",
    "x-kubernetes-validations",
    "nullable",
}


def structural(schema: dict[str, Any], defs: dict[str, Any], name: str = "") -> dict[str, Any]:
    """Turn pydantic's JSON Schema into a Kubernetes structural schema: inline $refs, turn
    `anyOf [X, null]` into nullable X, exclusive bounds into OpenAPI v3.0 booleans, and drop
    what the API server does not accept (titles, additionalProperties: false)."""
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs, name)
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"]
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if sorted(o.get("type", "") for o in options) == ["integer", "string"]:
            return int_or_string(options, rest)
        if len(options) != 1:
            raise ValueError(f"{name}: unions other than Optional[X] have no structural schema")
        return {**structural({**options[0], **rest}, defs, name), "nullable": True}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out[key] = {k: structural(v, defs, k) for k, v in value.items()}
        elif key == "items":
            out[key] = structural(value, defs, name)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = structural(value, defs, name)
        elif key in _KEEP:
            out[key] = value
    if out.get("default", "absent") is None:
        del out["default"]
    if out.get("type") == "array" and name in _LIST_MAP_KEYS:
        item = out.get("items", {})
        if item.get("type") == "object" and _LIST_MAP_KEYS[name] in item.get("required", []):
            out["x-kubernetes-list-type"] = "map"
            out["x-kubernetes-list-map-keys"] = [_LIST_MAP_KEYS[name]]
    return out


def int_or_string(options: list[dict[str, Any]], rest: dict[str, Any]) -> dict[str, Any]:
    """`int | Literal[...]`: Kubernetes' int-or-string, its bounds and words as one CEL rule
    (a structural schema cannot state them per type)."""
    number = next(o for o in options if o["type"] == "integer")
    words = next(o for o in options if o["type"] == "string")
    allowed = [words["const"]] if "const" in words else list(words.get("enum", []))
    bounds = [f"self >= {number['minimum']}"] if "minimum" in number else []
    bounds += [f"self <= {number['maximum']}"] if "maximum" in number else []
    word_rule = " || ".join(f"self == {json.dumps(w)}" for w in allowed) or "true"
    low, high = number.get("minimum", "-inf"), number.get("maximum", "inf")
    rule = f"type(self) == int ? ({' && '.join(bounds) or 'true'}) : ({word_rule})"
    message = f"expected an integer in [{low}, {high}] or one of {allowed}"
    out: dict[str, Any] = {
        "x-kubernetes-int-or-string": True,
        "x-kubernetes-validations": [{"rule": rule, "message": message}],
    }
    out.update({k: v for k, v in rest.items() if k in ("description", "default")})
    return out


def schema_of(model: type[BaseModel], mode: str) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode=mode)  # type: ignore[arg-type]
    return structural(raw, raw.get("$defs", {}))


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Targets",
        "type": "string",
        "jsonPath": ".status.readyTargets",
        "description": "targets with a selected engine / targets that can run; skipped ones apart",
    },
    {"name": "Best", "type": "string", "jsonPath": ".status.best"},
    {"name": "Speedup", "type": "string", "jsonPath": ".status.bestSpeedup"},
    {
        "name": "Savings",
        "type": "string",
        "jsonPath": ".status.savings",
        "description": "monthly savings on the cheapest target (with serving.targetThroughput "
        "and cost.hourly)",
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def render_crds() -> dict[str, str]:
    """File name -> YAML text, as checked in under crds/."""
    import yaml

    header = "# Generated by `kiln crds --output crds/` from kiln.api; do not edit.\n"
    text = yaml.safe_dump(optimizedmodel_crd(), sort_keys=False, width=100)
    crd_file = f"{API_GROUP}_{PLURAL}.yaml"
    # A kustomization next to the CRDs makes crds/ a base that manifests/ includes.
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [crd_file],
    }
    return {
        crd_file: header + text,
        "kustomization.yaml": header + yaml.safe_dump(kustomization, sort_keys=False),
    }


def optimizedmodel_crd() -> dict[str, Any]:
    spec_schema = schema_of(OptimizedModelSpec, "validation")
    spec_schema["description"] = "What to optimize and how to decide; see the README."
    status_schema = schema_of(OptimizedModelStatus, "serialization")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["kiln"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }
