"""The trust bundle format shared by its writer and readers: the published JSON schema is current and
agrees with the reader on good and bad documents, bundles round-trip, and sequences only go forward."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera import errors, trustbundle
from tessera.core import bundles, issuer
from tessera.crypto import keys
from tests.sidecar_kit import Kit

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "trust-bundle.schema.json"
VALIDATOR = jsonschema.Draft202012Validator(trustbundle.SCHEMA)
NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)


def test_the_published_schema_is_the_models() -> None:
    """docs/trust-bundle.schema.json is generated (`make schema`); this fails when it is stale."""
    jsonschema.Draft202012Validator.check_schema(trustbundle.SCHEMA)
    assert SCHEMA_FILE.read_text() == trustbundle.schema_text(), "run `make schema`"


@functools.cache
def written_text() -> str:
    """A bundle as the operator writes it: core.bundles renders it, with grants and a sequence."""
    account = keys.generate("EdDSA").public_key()
    kid = keys.thumbprint(account)
    inputs = bundles.Inputs(
        issuer_url="https://issuer.test",
        issuer_jwks=issuer.jwks(issuer.initial("RS256", NOW)),
        account_keys=[],
        revocations={},
        accounts=[bundles.Account("urn:tessera:serviceaccount:shop:a", ("10.0.0.0/8",), False)],
    )
    shared = bundles.document(inputs, NOW)
    shared = dataclasses.replace(
        shared,
        account_keys=({**keys.public_jwk(account, kid), "sub": "urn:tessera:serviceaccount:shop:a", "exp": 1},),
        revocations=(trustbundle.Revocation("urn:tessera:serviceaccount:shop:b", 5),),
    )
    grants = {"user:https://idp#alice": trustbundle.Grant(("shop.orders.read",), ("orders.shop.svc",))}
    content = bundles.render(bundles.with_grants(shared, grants))
    data = bundles.planned_data(content, None, None, NOW)
    assert data is not None
    return data["bundle.json"]


def written() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(written_text())
    return parsed


def test_what_the_writer_renders_the_schema_and_the_reader_accept_and_it_round_trips() -> None:
    for doc in (written(), Kit.make().bundle()):
        VALIDATOR.validate(doc)
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        assert trustbundle.render(trustbundle.parse(text)) == text


def changed(change: Any) -> dict[str, Any]:
    doc = written()
    change(doc)
    return doc


BAD = [
    ("version 2", lambda d: d.update(version=2)),
    ("version true", lambda d: d.update(version=True)),
    ("no issuer", lambda d: d.pop("issuer")),
    ("empty issuer", lambda d: d.update(issuer="")),
    ("sequence zero", lambda d: d.update(sequence=0)),
    ("sequence a string", lambda d: d.update(sequence="7")),
    ("sequence beyond 2**53", lambda d: d.update(sequence=2**53)),
    ("issuer keys not a list", lambda d: d["issuerKeys"].update(keys={})),
    ("a key without kid", lambda d: d["issuerKeys"]["keys"][0].pop("kid")),
    ("an account key without sub", lambda d: d["serviceAccountKeys"]["keys"][0].pop("sub")),
    ("a key with a string exp", lambda d: d["serviceAccountKeys"]["keys"][0].update(exp="soon")),
    ("revocations an object", lambda d: d.update(revocations={})),
    ("a revocation with a string notBefore", lambda d: d.update(revocations=[{"sub": "x", "notBefore": "now"}])),
    ("cidrs not a list", lambda d: d.update(accounts={"x": {"cidrs": "10.0.0.0/8"}})),
    ("permissions a string", lambda d: d.update(grants={"x": {"permissions": "a.b.c"}})),
    ("services numbers", lambda d: d.update(grants={"x": {"permissions": [], "services": [1]}})),
]


@pytest.mark.parametrize(("name", "change"), BAD, ids=[n for n, _ in BAD])
def test_the_schema_and_the_reader_refuse_the_same_documents(name: str, change: Any) -> None:
    doc = changed(change)
    assert not VALIDATOR.is_valid(doc), name
    with pytest.raises(errors.BundleError):
        trustbundle.parse(json.dumps(doc))


def test_members_a_reader_does_not_know_are_ignored_by_both() -> None:
    doc = changed(lambda d: d.update(future={"anything": 1}))
    assert VALIDATOR.is_valid(doc)
    assert trustbundle.parse(json.dumps(doc)).issuer == "https://issuer.test"


@given(st.integers(min_value=1, max_value=trustbundle.MAX_SEQUENCE), st.integers(min_value=1, max_value=10**6))
def test_a_bundle_replaces_only_an_older_one(current: int, step: int) -> None:
    assert trustbundle.newer(current + step, current)
    assert not trustbundle.newer(current, current)
    assert not trustbundle.newer(current, current + step)
    assert trustbundle.newer(None, current) and trustbundle.newer(current, None)  # unsequenced: by arrival
