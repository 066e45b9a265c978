"""Generated CRDs: crds/ is up to date with the models, and the schemas are structural."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

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


class Yaml11(yaml.SafeLoader):
    """A loader that reads plain scalars as kubectl's YAML 1.1 parser does: y and n are booleans."""

    bool_values: ClassVar[dict[str, bool]] = {**yaml.SafeLoader.bool_values, "y": True, "n": False}


Yaml11.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))


def load_yaml11(text: str) -> Any:
    return yaml.load(text, Loader=Yaml11)  # noqa: S506 (a SafeLoader with two more boolean words)


@pytest.mark.parametrize("kind", kinds.ALL, ids=lambda k: k.info.kind)
def test_a_yaml_11_reader_gets_the_model_back(kind: kinds.Kind) -> None:
    # The EC JWK members "y" (and any other such word) must be quoted, or kubectl reads a boolean key.
    assert load_yaml11(kinds.rendered()[kind.filename]) == kind.crd()


def test_the_yaml_11_reader_does_read_bare_y_as_a_boolean() -> None:
    assert load_yaml11("y: 1\n'n': 2\n") == {True: 1, "n": 2}
