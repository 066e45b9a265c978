"""Generate CustomResourceDefinitions from the pydantic models (the single source of truth).

Pydantic emits JSON Schema; the API server wants a *structural* OpenAPI v3 schema. The conversion
inlines ``$defs``, drops ``title``, turns ``anyOf [X, null]`` into ``X`` + ``nullable``, removes
``additionalProperties: false`` and null defaults, and keeps descriptions, bounds, patterns, enums
and the ``x-kubernetes-*`` extensions (CEL rules) that models attach to fields.
"""

from __future__ import annotations

from typing import Any

import pydantic

from tessera.api import meta

JsonSchema = dict[str, Any]

_DROP_KEYS = frozenset({"title", "$defs", "discriminator"})


_RULES = "x-kubernetes-validations"


def _merge(inner: JsonSchema, outer: JsonSchema) -> JsonSchema:
    """Outer keys win, except CEL rules: a field's rules and its model's rules both apply."""
    merged = {**inner, **outer}
    if _RULES in inner and _RULES in outer:
        merged[_RULES] = [*inner[_RULES], *outer[_RULES]]
    return merged


def _inline(node: Any, defs: dict[str, JsonSchema]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = _merge(target, {k: v for k, v in node.items() if k != "$ref"})
        return _inline(merged, defs)
    return {key: _inline(value, defs) for key, value in node.items()}


def _nullable(node: JsonSchema) -> JsonSchema:
    """``anyOf: [X, {type: null}]`` -> X with ``nullable: true`` (outer keys such as description win)."""
    options = node.get("anyOf")
    if not isinstance(options, list):
        return node
    kept = [o for o in options if o.get("type") != "null"]
    if len(kept) != 1 or len(kept) == len(options):
        return node
    outer = {k: v for k, v in node.items() if k != "anyOf"}
    return {**_merge(kept[0], outer), "nullable": True}


def structural(node: Any) -> Any:
    """Make one already-inlined JSON Schema node structural, recursively."""
    if isinstance(node, list):
        return [structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = _nullable(node)
    out: JsonSchema = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "default" and value is None:
            continue
        if key == "uniqueItems":
            out.setdefault("x-kubernetes-list-type", "set")
            continue
        out[key] = structural(value) if key not in {"default", "enum", "required"} else value
    if "properties" in out and "type" not in out:
        out["type"] = "object"
    return out


def schema_of(model: type[pydantic.BaseModel]) -> JsonSchema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    result: JsonSchema = structural(_inline(raw, defs))
    return result


def _columns(info: meta.KindInfo) -> list[JsonSchema]:
    columns = []
    for column in info.columns:
        entry: JsonSchema = {"name": column.name, "type": column.type, "jsonPath": column.json_path}
        if column.priority:
            entry["priority"] = column.priority
        if column.description:
            entry["description"] = column.description
        columns.append(entry)
    return columns


def crd(info: meta.KindInfo, spec: type[pydantic.BaseModel], status: type[pydantic.BaseModel]) -> JsonSchema:
    """The full CustomResourceDefinition for one kind."""
    spec_schema = schema_of(spec)
    spec_schema["description"] = info.description
    root: JsonSchema = {
        "type": "object",
        "description": info.description,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": schema_of(status),
        },
        "required": ["spec"],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.crd_name, "labels": {"app.kubernetes.io/part-of": "tessera"}},
        "spec": {
            "group": meta.GROUP,
            "scope": "Namespaced" if info.namespaced else "Cluster",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [meta.CATEGORY],
            },
            "versions": [
                {
                    "name": meta.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _columns(info),
                }
            ],
        },
    }
