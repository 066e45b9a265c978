"""Generated CRDs: crds/ is up to date with the models, and the schemas are structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tessera.api import kinds

CRDS = Path(__file__).resolve().parents[2] / "crds"


def walk(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [n for item in node for n in walk(item)]
    if isinstance(node, dict):
        return [node, *(n for value in node.values() for n in walk(value))]
    return []


def test_crds_folder_matches_the_models() -> None:
    expected = kinds.rendered()
    on_disk = {p.name: p.read_text() for p in CRDS.glob("*.yaml")}
    stale = sorted(name for name in expected.keys() | on_disk.keys() if expected.get(name) != on_disk.get(name))
    assert not stale, f"crds/ is stale for {stale}: run `make crds` and commit the result"


@pytest.mark.parametrize("kind", kinds.ALL, ids=lambda k: k.info.kind)
def test_schema_is_structural(kind: kinds.Kind) -> None:
    schema = kind.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for node in walk(schema):
        assert not {"$ref", "$defs", "title", "anyOf", "uniqueItems"} & node.keys(), node
        if "properties" in node:
            assert node.get("type") == "object", node
            assert node.get("additionalProperties") is not False


@pytest.mark.parametrize("kind", kinds.ALL, ids=lambda k: k.info.kind)
def test_every_kind_is_in_the_tessera_category_with_short_names(kind: kinds.Kind) -> None:
    names = kind.crd()["spec"]["names"]
    assert names["categories"] == ["tessera"] and names["shortNames"]


def test_yaml_11_boolean_words_are_quoted_so_kubectl_reads_them_as_names() -> None:
    text = "".join(kinds.rendered().values())
    assert "\n                      'y':" in text and "\n                      'n':" in text
    assert not any(line.strip() in {"y:", "n:"} for line in text.splitlines())
