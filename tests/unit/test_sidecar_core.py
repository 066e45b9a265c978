"""The sidecar's pure parts: reading the operator's bundle, refusing broken ones, rules and paths,
permission and source checks, the cache, metrics."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera import errors, trustbundle
from tessera.core import accountkeys, bundles, issuer, revocations
from tessera.crypto import keys
from tessera.sidecar import metrics, rules, trust, verify
from tests.sidecar_kit import AUDIENCE, BILLING, LAPTOP, NOW, RULES, Kit

AUDIENCES = frozenset({AUDIENCE})


def test_reads_the_bundle_the_operator_renders() -> None:
    """Not a hand-made imitation: core.bundles renders it, as the publisher does."""
    now = datetime.datetime.fromtimestamp(NOW, datetime.UTC)
    keyset = issuer.initial("ES256", now)
    account = keys.generate("EdDSA")
    kid = keys.thumbprint(account.public_key())
    jwk = {**keys.public_jwk(account.public_key(), kid), "sub": LAPTOP}
    registered = accountkeys.RegisteredKey("shop", "laptop", LAPTOP, kid, "EdDSA", jwk, None)
    revoked = revocations.Revocation(BILLING, now, now + datetime.timedelta(hours=1))
    inputs = bundles.Inputs(
        issuer_url="https://issuer.test",
        issuer_jwks=issuer.jwks(keyset),
        account_keys=[registered],
        revocations={BILLING: revoked},
        accounts=[bundles.Account(LAPTOP, ("10.0.0.0/8",), False)],
    )
    grants = {LAPTOP: trustbundle.Grant(("shop.orders.*",), ("orders.shop.svc",))}
    text = bundles.render(bundles.with_grants(bundles.document(inputs, now), grants))
    parsed = trust.parse(text)
    assert parsed.issuer == "https://issuer.test"
    assert set(parsed.keys) == {keyset[0].kid, kid}
    assert parsed.keys[kid].subject == LAPTOP and parsed.keys[kid].algorithm == "EdDSA"
    assert parsed.keys[keyset[0].kid].subject is None and parsed.keys[keyset[0].kid].algorithm == "ES256"
    assert parsed.revocations == {BILLING: NOW}
    assert [str(n) for n in parsed.cidrs[LAPTOP]] == ["10.0.0.0/8"]
    assert parsed.grants[LAPTOP] == frozenset({"shop.orders.*"}) and parsed.services[LAPTOP] == ("orders.shop.svc",)


def broken(change: Any) -> str:
    doc = Kit.make().bundle()
    change(doc)
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not JSON"),
        ("[]", "not a JSON object"),
        (broken(lambda d: d.update(version=2)), "unsupported trust bundle version 2"),
        (broken(lambda d: d.pop("issuer")), "names no issuer"),
        (broken(lambda d: d["issuerKeys"].update(keys={})), "issuerKeys.keys must be a list"),
        (broken(lambda d: d["issuerKeys"]["keys"][0].pop("kid")), "string kid"),
        (broken(lambda d: d["issuerKeys"]["keys"][0].update(x="AAAA")), "not a valid public key"),
        (broken(lambda d: d["issuerKeys"]["keys"][0].update(alg="RS256")), "its type signs ES256"),
        (broken(lambda d: d["issuerKeys"]["keys"][0].update(d="AAAA")), "private key members"),
        (broken(lambda d: d["serviceAccountKeys"]["keys"][0].pop("sub")), "needs its sub"),
        (broken(lambda d: d["serviceAccountKeys"]["keys"][0].update(exp="soon")), "non-integer exp"),
        (broken(lambda d: d.update(revocations=[{"sub": "x", "notBefore": "now"}])), "integer notBefore"),
        (broken(lambda d: d.update(accounts={"x": {"cidrs": ["10.0.0.0/33"]}})), "invalid CIDR"),
        (broken(lambda d: d.update(grants={"x": {"permissions": "a.b.c"}})), "list of permissions"),
    ],
)
def test_a_broken_bundle_is_refused_with_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(errors.BundleError, match=message):
        trust.parse(text)


def test_a_kid_published_twice_is_trusted_for_neither() -> None:
    kit = Kit.make()
    doc = kit.bundle()
    doc["serviceAccountKeys"]["keys"][0]["kid"] = kit.issuer_kid
    assert kit.issuer_kid not in trust.parse(json.dumps(doc)).keys


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/", "/"),
        ("/orders/1", "/orders/1"),
        ("/orders/1/", "/orders/1/"),
        ("/orders/1?q=a/../b", "/orders/1"),
        ("/%6Frders/caf%C3%A9", "/orders/café"),
        ("orders/1", None),
        ("//orders", None),
        ("/orders//1", None),
        ("/a/./b", None),
        ("/a/../b", None),
        ("/a/%2E%2E/b", None),
        ("/a/%2e/b", None),
        ("/a%2Fb", None),
        ("/a%5cb", None),
        ("/a\\b", None),
        ("/a%00b", None),
        ("/a%0ab", None),
        ("/a%zzb", None),
        ("/a%", None),
        ("/caf%E9", None),  # not UTF-8
        ("/café", None),  # not percent-encoded
        ("/H\udca4\udcdcT", None),  # undecodable bytes, as aiohttp hands them over (found by the HTTP fuzz)
    ],
)
def test_canonical_paths(target: str, path: str | None) -> None:
    assert rules.canonical_path(target) == path


@pytest.mark.parametrize(
    ("method", "target", "rule_index", "reason"),
    [
        ("GET", "/healthz", 0, "matched"),
        ("POST", "/healthz", 0, "matched"),
        ("GET", "/orders", 1, "matched"),
        ("GET", "/orders/", 1, "matched"),
        ("HEAD", "/orders/1/lines/2", 1, "matched"),
        ("POST", "/orders/1/cancel", 2, "matched"),
        ("POST", "/orders/1/2/cancel", None, "no_rule"),
        ("GET", "/orders/1/cancel", 1, "matched"),
        ("GET", "/ordersX", None, "no_rule"),
        ("GET", "/Healthz", None, "ambiguous_case"),
        ("get", "/orders/1", None, "no_rule"),
    ],
)
def test_rule_matching_first_match_wins(method: str, target: str, rule_index: int | None, reason: str) -> None:
    found = rules.match(rules.parse(RULES), method, target)
    assert (found.rule.index if found.rule else None, found.reason) == (rule_index, reason)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "top-level list named rules"),
        ({"rules": [], "extra": 1}, "unknown top-level fields"),
        ({"rules": [{"path": "/a"}]}, "exactly one of permission or allow"),
        ({"rules": [{"path": "/a", "allow": "anyone", "permission": "a.b.c"}]}, "exactly one"),
        ({"rules": [{"path": "a", "allow": "anyone"}]}, "must start with /"),
        ({"rules": [{"path": "/a/**/b", "allow": "anyone"}]}, "must be a name"),
        ({"rules": [{"path": "/a*", "allow": "anyone"}]}, "must be a name"),
        ({"rules": [{"path": "/a//b", "allow": "anyone"}]}, "must be a name"),
        ({"rules": [{"path": "/a", "permission": "shop.*.read"}]}, "without wildcards"),
        ({"rules": [{"path": "/a", "permission": "a.b"}]}, "namespace.resource.verb"),
        ({"rules": [{"path": "/a", "allow": "everyone"}]}, "authenticated or anyone"),
        ({"rules": [{"path": "/a", "allow": "anyone", "methods": ["get"]}]}, "upper-case"),
        ({"rules": [{"path": "/a", "allow": "anyone", "methods": []}]}, "upper-case"),
        ({"rules": [{"path": "/a", "allow": "anyone", "verbs": ["GET"]}]}, "unknown fields"),
    ],
)
def test_bad_rules_are_refused_with_the_rule_named(doc: Any, message: str) -> None:
    with pytest.raises(rules.RulesError, match=message):
        rules.parse(doc)


@pytest.mark.parametrize(
    ("granted", "needed", "ok"),
    [
        ({"shop.orders.read"}, "shop.orders.read", True),
        ({"shop.*.read"}, "shop.orders.read", True),
        ({"shop.orders.*"}, "shop.orders.write", True),
        ({"*.*.*"}, "shop.orders.read", True),
        ({"shop.*"}, "shop.orders.read", False),  # segments count: a wildcard is one whole segment
        ({"shop.orders.read"}, "shop.orders.write", False),
        ({"dev.tessera.ledger.*"}, "dev.tessera.ledger.post", True),
        ({"dev.tessera.*"}, "dev.tessera.ledger.post", False),
        (set(), "shop.orders.read", False),
    ],
)
def test_permission_wildcards_match_whole_segments(granted: set[str], needed: str, ok: bool) -> None:
    assert verify.permitted(frozenset(granted), needed) is ok


def test_source_ranges_all_apply_and_ipv4_mapped_addresses_count() -> None:
    kit = Kit.make()
    kit.cidrs[BILLING] = ["10.0.0.0/8"]
    v = verify.Verifier(trust.parse(kit.bundle_text()), verify.Policy(AUDIENCES))
    identity = v.authenticate(kit.issued(cidrs=["10.1.0.0/16", "fd00::/8"]), NOW)
    assert isinstance(identity, verify.Identity)
    assert verify.source_allowed(identity, "10.1.2.3")
    assert verify.source_allowed(identity, "::ffff:10.1.2.3")
    assert not verify.source_allowed(identity, "10.2.0.1")  # inside the account's range, outside the token's
    assert not verify.source_allowed(identity, "fd00::1")  # inside the token's, outside the account's
    assert not verify.source_allowed(identity, None) and not verify.source_allowed(identity, "nonsense")


def test_verified_tokens_are_cached_by_digest_until_expiry() -> None:
    kit = Kit.make()
    v = verify.Verifier(trust.parse(kit.bundle_text()), verify.Policy(AUDIENCES, leeway=5), cache_limit=4)
    token = kit.issued(exp=NOW + 100)
    assert isinstance(v.authenticate(token, NOW), verify.Identity)
    assert isinstance(v.authenticate(token, NOW + 1), verify.Identity) and (v.hits, v.misses) == (1, 1)
    assert v.authenticate(token, NOW + 106) == verify.Failure("expired")  # past exp + leeway: verified again
    assert v.misses == 2
    for i in range(10):
        v.authenticate(kit.issued(jti=f"j{i}"), NOW)
    assert v.cached <= 4  # bounded; keyed by a SHA-256 digest (dict[bytes, Identity]): no token is kept


def test_metrics_render_decisions_latency_cache_and_bundle_state() -> None:
    m = metrics.Metrics()
    m.decided(200, "permitted", 0.00007)
    m.decided(401, "expired", 0.0002)
    m.decided(401, "expired", 0.0002)
    text = m.render(metrics.Gauges((5, 2), bundle_changed_at=100.0, bundle_valid=False), now=lambda: 130.0)
    assert 'tessera_sidecar_decisions_total{result="unauthenticated",reason="expired"} 2' in text
    assert 'tessera_sidecar_decision_seconds_bucket{le="0.0001"} 1' in text
    assert 'tessera_sidecar_decision_seconds_bucket{le="+Inf"} 3' in text
    assert "tessera_sidecar_token_cache_hits_total 5" in text and "tessera_sidecar_bundle_age_seconds 30.0" in text
    assert "tessera_sidecar_bundle_valid 0" in text


def test_the_example_workload_is_consistent_with_the_sidecar() -> None:
    """examples/40-ledger-workload.yaml: its rules parse, its sidecar arguments parse, and the billing
    account's token audience (10-serviceaccount.yaml) is one the sidecar accepts."""
    import argparse
    from pathlib import Path

    import yaml

    from tessera import cli

    examples = Path(__file__).parents[2] / "examples"
    docs = list(yaml.safe_load_all((examples / "40-ledger-workload.yaml").read_text()))
    [config] = [d for d in docs if d["kind"] == "ConfigMap"]
    ruleset = rules.parse(yaml.safe_load(config["data"]["rules.yaml"]))
    assert rules.match(ruleset, "POST", "/entries").rule is not None
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [sidecar] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "tessera-sidecar"]
    args: argparse.Namespace = cli.parser().parse_args(sidecar["args"])
    billing = yaml.safe_load((examples / "10-serviceaccount.yaml").read_text())
    assert args.audience in billing["spec"]["token"]["audiences"]
    needed = {r.permission for r in ruleset if r.permission}
    [role] = [d for d in docs if d["kind"] == "Role"]
    assert needed <= set(role["spec"]["permissions"])
    assert args.issuer_url == "https://tessera.tessera-system.svc" and args.kubernetes_token_file
    [volume] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "projected" in v]
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == args.issuer_url

    [billing] = [d for d in yaml.safe_load_all((examples / "50-billing-caller.yaml").read_text()) if d]
    [egress] = [c for c in billing["spec"]["template"]["spec"]["containers"] if c["name"] == "tessera-sidecar"]
    egress_args: argparse.Namespace = cli.parser().parse_args(egress["args"])
    assert egress_args.egress_only and egress_args.egress == ["127.0.0.1:9001=http://ledger.shop.svc"]
    [secret] = [v["secret"]["secretName"] for v in billing["spec"]["template"]["spec"]["volumes"]]
    assert secret == "billing-tessera-token" and egress_args.token_file.startswith("/var/run/tessera/token/")


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80), st.text(max_size=8))
def test_matching_any_text_never_raises(target: str, method: str) -> None:
    found = rules.match(rules.parse(RULES), method, target)
    assert found.reason in ("matched", "no_rule", "path_not_canonical", "ambiguous_case")
