"""Identity providers' keys without a network: JWKS parsing, discovery, refresh planning, status."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from tessera import errors
from tessera.api import identityprovider as idp_api
from tessera.core import providers
from tessera.crypto import keys

NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
ALL = frozenset({"RS256", "ES256", "EdDSA"})


def provider(status: dict[str, Any] | None = None, generation: int = 1, **spec: Any) -> idp_api.IdentityProvider:
    body = {"issuer": "https://idp.example.com", "audiences": ["tessera"], **spec}
    meta = {"name": "idp", "generation": generation}
    return idp_api.IdentityProvider.parse({"metadata": meta, "spec": body, "status": status or {}})


def jwk(algorithm: keys.Algorithm, **extra: Any) -> dict[str, Any]:
    key = keys.generate(algorithm)
    return {**keys.public_jwk(key.public_key(), extra.pop("kid", None)), **extra}


def test_parse_jwks_keeps_usable_signing_keys_only() -> None:
    rsa, ec = jwk("RS256", kid="r"), jwk("ES256", kid="e")
    skipped = [
        jwk("ES256", kid="enc", use="enc"),
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {**jwk("ES256"), "kid": 7},
        jwk("EdDSA", kid="ed"),  # not allowed below
        {**jwk("ES256", kid="lie"), "alg": "RS256"},
        jwk("ES256", kid="twice"),
        jwk("ES256", kid="twice"),  # a repeated kid is ambiguous: both dropped
    ]
    found = providers.parse_jwks({"keys": [rsa, ec, *skipped]}, frozenset({"RS256", "ES256"}), "https://x/jwks")
    assert sorted(found.keys) == ["e", "r"] and found.skipped == len(skipped)
    assert found.keys["r"].algorithm == "RS256" and "2 signing keys" in found.message()
    private = {**jwk("ES256", kid="p"), "d": "AAAA"}
    assert providers.parse_jwks({"keys": [private]}, ALL, "x").keys["p"]  # private members are dropped, not kept
    with pytest.raises(errors.KeyMaterialError):
        providers.parse_jwks({"nokeys": []}, ALL, "x")


def test_discovery_must_name_the_same_issuer_and_an_https_jwks_uri() -> None:
    spec = provider().spec
    assert providers.discovery_url(spec) == "https://idp.example.com/.well-known/openid-configuration"
    good = {"issuer": "https://idp.example.com", "jwks_uri": "https://idp.example.com/keys"}
    assert providers.jwks_uri_from_discovery(good, spec) == "https://idp.example.com/keys"
    bad_documents: list[Any] = [
        {**good, "issuer": "https://evil.example"},
        {**good, "jwks_uri": "http://idp/keys"},
        [],
        {"issuer": spec.issuer},
    ]
    for bad in bad_documents:
        with pytest.raises(errors.KeyMaterialError):
            providers.jwks_uri_from_discovery(bad, spec)


def ready(ok: bool, reason: str = "KeysFetched", at: datetime.datetime = NOW) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True" if ok else "False",
        "reason": reason,
        "lastTransitionTime": at.isoformat(),
    }


def test_fetch_due() -> None:
    fetched = {"observedGeneration": 1, "conditions": [ready(True)], "lastFetchTime": NOW.isoformat()}
    assert providers.fetch_due(provider(), NOW)  # never fetched
    assert not providers.fetch_due(provider(fetched), NOW + datetime.timedelta(minutes=59))
    assert providers.fetch_due(provider(fetched), NOW + datetime.timedelta(hours=1))
    assert providers.fetch_due(provider(fetched, generation=2), NOW)  # the spec changed
    assert providers.fetch_due(provider({**fetched, "conditions": [ready(False, "KeysUnavailable")]}), NOW)
    assert not providers.fetch_due(provider(fetched, disabled=True), NOW)
    inline = provider(fetched, jwks={"keys": [jwk("ES256", kid="i")]})
    assert not providers.fetch_due(inline, NOW + datetime.timedelta(days=30))


def test_unknown_kid_refetch_is_rate_limited() -> None:
    assert providers.may_fetch_for_unknown_kid(None, NOW)
    assert not providers.may_fetch_for_unknown_kid(NOW, NOW + datetime.timedelta(seconds=59))
    assert providers.may_fetch_for_unknown_kid(NOW, NOW + providers.UNKNOWN_KID_INTERVAL)


def test_status() -> None:
    found = providers.parse_jwks({"keys": [jwk("RS256", kid="a")]}, ALL, "https://idp.example.com/keys")
    body = providers.status(provider(), found, None, NOW)
    [condition] = body["conditions"]
    assert (condition["status"], condition["reason"]) == ("True", "KeysFetched")
    assert body["keyCount"] == 1 and body["keyIds"] == ["a"] and body["lastFetchTime"] == NOW.isoformat()
    failed = providers.status(provider(body), None, "GET https://idp.example.com/keys answered 500", NOW)
    [condition] = failed["conditions"]
    assert (condition["status"], condition["reason"]) == ("False", "KeysUnavailable") and "500" in condition["message"]
    assert providers.changed(body, failed) and not providers.changed(failed, failed)
    assert providers.status(provider(disabled=True), None, None, NOW)["conditions"][0]["reason"] == "Disabled"
    empty = providers.parse_jwks({"keys": []}, ALL, "x")
    assert providers.status(provider(), empty, None, NOW)["conditions"][0]["reason"] == "NoUsableKeys"


def test_user_principal_is_the_rolebinding_member_key() -> None:
    assert providers.user_principal(provider().spec, "alice") == "user:https://idp.example.com#alice"
