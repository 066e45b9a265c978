"""The token endpoint's pure decisions: parsing forms, audiences, checks on accounts, keys, assertions
and providers, lifetimes, claims and the discovery document."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from tessera.api import identityprovider as idp_api
from tessera.api import serviceaccount as sa_api
from tessera.api import serviceaccountkey as sak_api
from tessera.core import exchange, issuer, settings
from tessera.crypto import keys

NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
CFG = settings.Settings(issuer="https://tessera.example.com", max_token_ttl=datetime.timedelta(hours=1))
EX = exchange.TOKEN_EXCHANGE
JWT = exchange.TYPE_JWT


def refusal(call: Any, *args: Any) -> exchange.Refusal:
    with pytest.raises(exchange.Refusal) as caught:
        call(*args)
    return caught.value


@pytest.mark.parametrize(
    ("pairs", "error", "says"),
    [
        ([], "invalid_request", "grant_type is missing"),
        ([("grant_type", "")], "invalid_request", "grant_type is missing"),
        ([("grant_type", "password")], "unsupported_grant_type", "not supported"),
        ([("grant_type", EX), ("subject_token_type", JWT)], "invalid_request", "subject_token is missing"),
        ([("grant_type", EX), ("subject_token", "t")], "invalid_request", "subject_token_type is missing"),
        ([("grant_type", EX), ("subject_token", "t"), ("subject_token_type", "saml")], "invalid_request", "saml"),
        ([("grant_type", EX), ("grant_type", EX)], "invalid_request", "more than once"),
        ([("grant_type", EX), ("subject_token", "a"), ("subject_token", "b")], "invalid_request", "more than once"),
        (
            [("grant_type", EX), ("subject_token", "t"), ("subject_token_type", JWT), ("actor_token", "x")],
            "invalid_request",
            "delegation",
        ),
        (
            [("grant_type", EX), ("subject_token", "t"), ("subject_token_type", JWT), ("requested_token_type", "x")],
            "invalid_request",
            "requested_token_type",
        ),
        ([("grant_type", exchange.JWT_BEARER)], "invalid_request", "assertion is missing"),
        ([("grant_type", EX), ("subject_token", "x" * 9000)], "invalid_request", "longer than"),
    ],
)
def test_parse_refuses(pairs: list[tuple[str, str]], error: str, says: str) -> None:
    refused = refusal(exchange.parse, pairs)
    assert refused.error == error and says in refused.description and refused.status == 400


def test_parse_accepts_repeated_audiences() -> None:
    parsed = exchange.parse(
        [("grant_type", EX), ("subject_token", "t"), ("subject_token_type", JWT), ("audience", "a"), ("audience", "b")]
    )
    assert parsed == exchange.Exchange("t", JWT, ("a", "b"))
    assert exchange.parse([("grant_type", exchange.JWT_BEARER), ("assertion", "x")]) == exchange.Bearer("x", ())


def test_audiences() -> None:
    assert exchange.audiences_for([], [], "tessera") == ["tessera"]
    assert exchange.audiences_for([], ["b", "a"], "tessera") == ["a", "b"]
    assert exchange.audiences_for(["a"], ["b", "a"], "tessera") == ["a"]
    assert refusal(exchange.audiences_for, ["c"], ["a"], "tessera").error == "invalid_target"
    assert refusal(exchange.audiences_for, ["tessera"], ["a"], "tessera").error == "invalid_target"


def account(**spec: Any) -> sa_api.ServiceAccount:
    return sa_api.ServiceAccount.parse({"metadata": {"name": "app", "namespace": "shop", "uid": "u"}, "spec": spec})


@pytest.mark.parametrize(
    ("found", "caller", "says"),
    [
        (exchange.Account(None, ("shop", "app")), "10.0.0.1", "does not exist"),
        (exchange.Account(account(), ("shop", "app"), deleting=True), "10.0.0.1", "being deleted"),
        (exchange.Account(account(disabled=True), ("shop", "app")), "10.0.0.1", "is disabled"),
        (exchange.Account(account(allowedCIDRs=["10.0.0.0/8"]), ("shop", "app")), "192.168.1.1", "allowedCIDRs"),
        (exchange.Account(account(allowedCIDRs=["10.0.0.0/8"]), ("shop", "app")), None, "allowedCIDRs"),
    ],
)
def test_check_account_refuses(found: exchange.Account, caller: str | None, says: str) -> None:
    refused = refusal(exchange.check_account, found, caller)
    assert refused.error == "invalid_grant" and says in refused.description


def test_check_account_allows_inside_the_ranges() -> None:
    sa = account(allowedCIDRs=["10.0.0.0/8", "fd00::/8"])
    for caller in ("10.1.2.3", "::ffff:10.1.2.3", "fd00::1"):
        assert exchange.check_account(exchange.Account(sa, ("shop", "app")), caller) is sa


def key(**changes: Any) -> tuple[sak_api.ServiceAccountKey, keys.PrivateKey, str]:
    private = keys.generate("ES256")
    kid = keys.thumbprint(private.public_key())
    status = {
        "subject": "urn:tessera:serviceaccount:shop:app",
        "keyId": kid,
        "publicKey": keys.public_pem(private.public_key()),
        "conditions": [{"type": "Ready", "status": "True", "reason": "KeyRegistered"}],
    }
    spec: dict[str, Any] = {"serviceAccountName": "app", "publicKey": {"pem": status["publicKey"]}}
    spec.update(changes.pop("spec", {}))
    status.update(changes)
    body = {"metadata": {"name": "k", "namespace": "shop"}, "spec": spec, "status": status}
    return sak_api.ServiceAccountKey.parse(body), private, kid


SUBJECT = "urn:tessera:serviceaccount:shop:app"


def test_check_key() -> None:
    found, _, kid = key()
    assert keys.thumbprint(exchange.check_key(found, kid, SUBJECT, NOW)) == kid
    cases = [
        (None, "no ServiceAccountKey"),
        (key(subject="urn:tessera:serviceaccount:shop:other")[0], "another account"),
        (key(spec={"disabled": True})[0], "is disabled"),
        (key(spec={"expiresAt": "2026-11-30T11:00:00Z"})[0], "expired"),
        (key(conditions=[{"type": "Ready", "status": "False", "reason": "InvalidKey"}])[0], "not registered"),
    ]
    for candidate, says in cases:
        found_kid = candidate.status.key_id if candidate is not None else "x"
        assert says in refusal(exchange.check_key, candidate, found_kid, SUBJECT, NOW).description


def test_check_assertion() -> None:
    leeway = datetime.timedelta(seconds=60)
    assert exchange.check_assertion({"jti": "a", "exp": NOW.timestamp() + 60}, NOW, leeway) == "a"
    assert "no jti" in refusal(exchange.check_assertion, {"exp": 1}, NOW, leeway).description
    assert "256" in refusal(exchange.check_assertion, {"jti": "x" * 257}, NOW, leeway).description
    far = {"jti": "a", "exp": NOW.timestamp() + 3600}
    assert "short-lived" in refusal(exchange.check_assertion, far, NOW, leeway).description


def provider(**spec: Any) -> idp_api.IdentityProvider:
    body = {"issuer": "https://idp.example.com", "audiences": ["tessera"], **spec}
    return idp_api.IdentityProvider.parse({"metadata": {"name": "idp"}, "spec": body})


def test_check_provider_and_user_subject() -> None:
    assert "not a trusted" in refusal(exchange.check_provider, None, "https://x").description
    assert "is disabled" in refusal(exchange.check_provider, provider(disabled=True), "https://x").description
    spec = provider(subjectClaim="email").spec
    assert exchange.user_subject(spec, {"email": "a@b"}) == "user:https://idp.example.com#a@b"
    assert "email" in refusal(exchange.user_subject, spec, {"sub": "a"}).description


def test_lifetime_is_capped_by_the_maximum_and_the_subject_token() -> None:
    assert exchange.lifetime(900, CFG, None, NOW) == 900
    assert exchange.lifetime(7200, CFG, None, NOW) == 3600
    assert exchange.lifetime(900, CFG, NOW.timestamp() + 100, NOW) == 100
    assert "nothing is left" in refusal(exchange.lifetime, 900, CFG, NOW.timestamp(), NOW).description


def test_claims_and_response() -> None:
    keyset = issuer.initial("ES256", NOW)
    sa = account(token={"audiences": ["ledger"]}, allowedCIDRs=["10.0.0.0/8"])
    body = exchange.account_claims(sa, ["ledger"], CFG, keyset[0], NOW, NOW + datetime.timedelta(seconds=1))
    assert body["iat"] == int(NOW.timestamp()) + 1 and body["sub"] == SUBJECT and body["aud"] == "ledger"
    assert "grants" not in body and body["cidrs"] == ["10.0.0.0/8"]
    again = exchange.account_claims(sa, ["ledger"], CFG, keyset[0], NOW, None)
    assert again["jti"] != body["jti"]  # each exchange is its own token
    user = exchange.user_claims("user:https://i#a", ["x", "y"], "client", 300, CFG, NOW)
    assert user["aud"] == ["x", "y"] and user["exp"] - user["iat"] == 300 and user["client_id"] == "client"
    answer = exchange.response("t", user, exchanged=True)
    assert answer == {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 300,
        "issued_token_type": exchange.TYPE_ACCESS_TOKEN,
    }
    assert "issued_token_type" not in exchange.response("t", user, exchanged=False)


def test_discovery_names_the_endpoints_and_key_algorithms() -> None:
    document = exchange.discovery(CFG, issuer.initial("RS256", NOW))
    assert document["issuer"] == CFG.issuer
    assert document["jwks_uri"] == "https://tessera.example.com/jwks"
    assert document["token_endpoint"] == exchange.token_endpoint(CFG) == "https://tessera.example.com/token"
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
