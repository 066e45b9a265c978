"""The chart's crds/ holds exactly the repository's CRDs, byte for byte (`make crds` copies them), plus
Kopf's peering CRDs; values.yaml documents every key it sets."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
CHART = ROOT / "charts" / "tessera"
KOPF_PEERING_CRDS = "kopf.dev_peerings.yaml"  # Kopf's own, not generated from Tessera's models


def test_chart_crds_are_copies_of_the_generated_crds() -> None:
    ours = {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}
    copied = {p.name: p.read_bytes() for p in (CHART / "crds").iterdir() if p.name != KOPF_PEERING_CRDS}
    assert ours, "crds/ is empty"
    differing = sorted(name for name in ours.keys() | copied.keys() if ours.get(name) != copied.get(name))
    assert not differing, f"charts/tessera/crds/ differs from crds/ for {differing}: run `make crds`"


def test_kopf_peering_crds_are_the_two_kopf_kinds() -> None:
    documents = list(yaml.safe_load_all((CHART / "crds" / KOPF_PEERING_CRDS).read_text()))
    assert sorted(d["metadata"]["name"] for d in documents) == ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]


def test_every_value_has_a_comment_starting_with_its_name() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    parents: list[tuple[int, str]] = []
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if match is None:
            continue
        indent, key = len(match.group(1)), match.group(2)
        parents = [(i, k) for i, k in parents if i < indent]
        path = ".".join([*(k for _, k in parents), key])
        parents.append((indent, key))
        if path.startswith(("resources.", "issuerService.resources.")):  # Kubernetes' own fields in a documented block
            continue
        first = number
        while first > 0 and lines[first - 1].strip().startswith("#"):
            first -= 1  # the comment block above the key; its first line names the key
        if not lines[first].strip().startswith(f"# {path}:"):
            undocumented.append(path)
    assert not undocumented, f"values.yaml keys without a '# <key>:' comment above them: {undocumented}"
