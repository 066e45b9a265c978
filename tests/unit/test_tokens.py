"""Token decisions: issue, keep, refresh, reissue on change, withdraw; claims and refresh spread."""

from __future__ import annotations

import base64
import datetime
import json

import jwt
import pytest

from tessera import errors
from tessera.api import serviceaccount as sa_api
from tessera.core import issuer, manifests, settings, status, tokens
from tessera.crypto import keys
from tessera.crypto import tokens as crypto_tokens

NOW = datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.UTC)
CFG = settings.Settings(namespace="tessera-system", issuer="https://issuer.test", default_audience="tessera")
KEYSET = issuer.initial("ES256", NOW)
ENCODED = base64.b64encode(b"a.token.in.a.secret").decode()  # a Secret's token data, as stored


def make_sa(**spec: object) -> sa_api.ServiceAccount:
    return sa_api.ServiceAccount.model_validate(
        {"metadata": {"name": "billing", "namespace": "shop", "uid": "u-1", "generation": 1}, "spec": spec}
    )


def issue(sa: sa_api.ServiceAccount, now: datetime.datetime = NOW) -> tokens.Issue:
    decision = tokens.decide(sa, None, KEYSET, CFG, now)
    assert isinstance(decision, tokens.Issue)
    return decision


def test_first_decision_issues_rfc9068_claims() -> None:
    decision = issue(make_sa())
    claims = decision.claims
    assert decision.reason == "TokenIssued"
    assert claims["iss"] == "https://issuer.test"
    assert claims["sub"] == "urn:tessera:serviceaccount:shop:billing" == claims["client_id"]
    assert claims["aud"] == "tessera"
    assert claims["exp"] - claims["iat"] == sa_api.DEFAULT_TTL_SECONDS
    assert len(claims["jti"]) == 32 and "cidrs" not in claims


def test_signed_token_verifies_with_the_published_jwks() -> None:
    decision = issue(make_sa(token={"audiences": ["billing-api", "ledger"]}, allowedCIDRs=["10.0.0.0/8"]))
    token = crypto_tokens.sign(decision.claims, decision.key.private_key, decision.key.kid)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": decision.key.kid, "typ": "at+jwt"}
    [jwk] = issuer.jwks(KEYSET)["keys"]
    public = keys.load_jwk(jwk)
    body = jwt.decode(
        token,
        public,
        algorithms=["ES256"],
        audience="ledger",
        issuer="https://issuer.test",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert body["aud"] == ["billing-api", "ledger"] and body["cidrs"] == ["10.0.0.0/8"]


def test_current_token_is_kept_until_refresh_then_refreshed() -> None:
    sa = make_sa(token={"ttlSeconds": 600})
    facts = issue(sa).facts
    assert NOW + datetime.timedelta(seconds=420) <= facts.refresh_at <= NOW + datetime.timedelta(seconds=480)
    kept = tokens.decide(sa, facts, KEYSET, CFG, facts.refresh_at - datetime.timedelta(seconds=1))
    assert isinstance(kept, tokens.Keep)
    due = tokens.decide(sa, facts, KEYSET, CFG, facts.refresh_at)
    assert isinstance(due, tokens.Issue) and due.reason == "TokenRefreshed"


@pytest.mark.parametrize(
    "change",
    [{"token": {"ttlSeconds": 120}}, {"token": {"audiences": ["other"]}}, {"allowedCIDRs": ["192.168.0.0/16"]}],
)
def test_changed_settings_reissue_at_once(change: dict[str, object]) -> None:
    facts = issue(make_sa()).facts
    decision = tokens.decide(make_sa(**change), facts, KEYSET, CFG, NOW + datetime.timedelta(seconds=1))
    assert isinstance(decision, tokens.Issue) and decision.reason == "TokenReissued"


def test_token_signed_by_a_retired_key_is_replaced() -> None:
    facts = issue(make_sa()).facts
    newer = issuer.initial("ES256", NOW)
    decision = tokens.decide(make_sa(), facts, newer, CFG, NOW + datetime.timedelta(seconds=1))
    assert isinstance(decision, tokens.Issue) and "retired" in decision.message


def test_disabled_account_is_withdrawn_and_needs_a_write_only_while_a_token_remains() -> None:
    facts = issue(make_sa()).facts
    for observed, pending in ((facts, True), (tokens.UNKNOWN, True), (None, False)):
        decision = tokens.decide(make_sa(disabled=True), observed, KEYSET, CFG, NOW)
        assert isinstance(decision, tokens.Withdraw) and decision.reason == "Disabled"
        assert decision.pending is pending, observed


def test_a_token_with_unreadable_facts_is_replaced_not_trusted() -> None:
    annotations = manifests.token_annotations(issue(make_sa()).facts)
    annotations[manifests.ANNOTATION_PREFIX + "expires-at"] = "garbage"
    observed = manifests.observed_token(annotations, ENCODED)
    assert observed is tokens.UNKNOWN
    decision = tokens.decide(make_sa(), observed, KEYSET, CFG, NOW)
    assert isinstance(decision, tokens.Issue) and decision.reason == "TokenReissued"
    assert manifests.observed_token(annotations, None) is None


def test_a_token_replaced_by_hand_is_not_trusted_and_its_replacement_repairs() -> None:
    decision = issue(make_sa())
    manifest = manifests.build_token_secret(make_sa(), "header.payload.sig", decision.facts)
    annotations = manifest["metadata"]["annotations"]
    assert manifests.observed_token(annotations, manifest["data"]["token"]) == decision.facts
    forged = base64.b64encode(b"header.payload.other").decode()
    assert manifests.observed_token(annotations, forged) is tokens.UNKNOWN
    assert manifests.observed_token(annotations, "not base64!") is tokens.UNKNOWN
    legacy = {k: v for k, v in annotations.items() if k != manifests.DIGEST_ANNOTATION}  # written before the digest
    assert manifests.observed_token(legacy, forged) == decision.facts
    expiry = decision.facts.expires_at
    assert tokens.repairs(tokens.UNKNOWN, None, NOW)
    assert tokens.repairs(None, expiry, NOW)  # the status shows a live token, the Secret holds none
    assert not tokens.repairs(None, expiry, expiry)  # it had expired anyway: a refresh, not a repair
    assert not tokens.repairs(None, None, NOW)  # a first token
    assert not tokens.repairs(decision.facts, expiry, NOW)


def test_refreshes_of_many_accounts_are_spread_over_a_tenth_of_the_ttl() -> None:
    moments = [tokens.refresh_at(f"uid-{i}", NOW, 1000, 0) for i in range(1000)]
    offsets = sorted((m - NOW).total_seconds() for m in moments)
    assert offsets[0] >= 700 and offsets[-1] <= 800
    assert offsets[-1] - offsets[0] > 90  # spread across the window, not bunched
    assert len(set(moments)) > 990
    again = [tokens.refresh_at(f"uid-{i}", NOW, 1000, 0) for i in range(1000)]
    assert again == moments  # re-planning gives the same moments


@pytest.mark.parametrize(
    ("ttl", "margin", "due"),
    [
        (900, 120, 720),  # long enough: 80 %
        (300, 120, 180),  # 80 % would leave 60 s: refreshed when 120 s remain
        (180, 120, 90),  # too short for the margin: at half its life
        (60, 120, 30),
        (1000, 0, 800),
    ],
)
def test_a_refresh_leaves_time_to_deliver_the_new_token(ttl: int, margin: float, due: float) -> None:
    assert tokens.refresh_after(ttl, margin) == due


def test_an_issued_token_is_refreshed_with_the_delivery_margin_left() -> None:
    cfg = settings.Settings(issuer="https://issuer.test", token_delivery_seconds=90, refresh_check_seconds=30)
    for ttl in (240, 300, 900, 3600):
        facts = tokens.decide(make_sa(token={"ttlSeconds": ttl}), None, KEYSET, cfg, NOW).facts  # type: ignore[union-attr]
        assert (facts.expires_at - facts.refresh_at).total_seconds() >= cfg.refresh_margin_seconds, ttl


def test_token_facts_round_trip_through_secret_annotations() -> None:
    decision = issue(make_sa())
    manifest = manifests.build_token_secret(make_sa(), "header.payload.sig", decision.facts)
    assert manifests.observed_token(manifest["metadata"]["annotations"], manifest["data"]["token"]) == decision.facts
    assert manifests.observed_token({}, None) is None
    assert manifests.observed_token({}, ENCODED) is tokens.UNKNOWN
    assert set(manifests.token_annotation_keys()) == set(manifest["metadata"]["annotations"])
    assert "header.payload.sig" not in str(manifest["metadata"])
    [owner] = manifest["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("ServiceAccount", "billing", True)


def test_a_token_after_revocation_is_issued_no_earlier_than_not_before() -> None:
    not_before = NOW + datetime.timedelta(seconds=1)
    decision = tokens.decide(make_sa(), None, KEYSET, CFG, NOW, not_before)
    assert isinstance(decision, tokens.Issue)
    assert decision.claims["iat"] == int(not_before.timestamp())  # at most a second ahead, never refused


def test_alive_until_remembers_the_longest_lived_token() -> None:
    long_lived = issue(make_sa(token={"ttlSeconds": 3600}))
    shorter = tokens.decide(make_sa(token={"ttlSeconds": 60}), long_lived.facts, KEYSET, CFG, NOW)
    assert isinstance(shorter, tokens.Issue) and shorter.reason == "TokenReissued"
    assert shorter.facts.expires_at == NOW + datetime.timedelta(seconds=60)
    assert shorter.facts.alive_until == long_lived.facts.expires_at
    assert tokens.alive_until(tokens.UNKNOWN, NOW, CFG) == NOW + CFG.max_token_ttl


def test_the_operator_caps_token_lifetime() -> None:
    capped = settings.Settings(issuer="https://issuer.test", max_token_ttl=datetime.timedelta(minutes=5))
    decision = tokens.decide(make_sa(token={"ttlSeconds": 3600}), None, KEYSET, capped, NOW)
    assert isinstance(decision, tokens.Issue)
    assert decision.claims["exp"] - decision.claims["iat"] == 300


def test_alive_until_survives_the_secret_annotations() -> None:
    facts = issue(make_sa()).facts
    assert manifests.observed_token(manifests.token_annotations(facts), ENCODED) == facts


@pytest.mark.parametrize(
    ("by_namespace", "cap", "claim"),
    [
        ({}, 100, {}),
        ({"shop": ["b.c.d", "a.b.c", "a.b.c"]}, 100, {"shop": ["a.b.c", "b.c.d"]}),
        ({"shop": ["a.b.c"]}, len('{"shop":["a.b.c"]}'), {"shop": ["a.b.c"]}),  # exactly at the cap
        ({"shop": ["a.b.c"]}, len('{"shop":["a.b.c"]}') - 1, None),
        ({"ops": ["x.y.z"], "shop": ["a.b.c"]}, 1000, {"ops": ["x.y.z"], "shop": ["a.b.c"]}),
        ({}, 0, None),  # a cap of zero keeps grants out of every token
    ],
)
def test_grants_claim_is_whole_or_left_out(by_namespace: dict[str, list[str]], cap: int, claim: object) -> None:
    found = tokens.token_grants(by_namespace, cap)
    assert found.claim == claim and found.omitted == (claim is None)


def test_grants_claim_is_deterministic_compact_json() -> None:
    found = tokens.token_grants({"z": ("b.c.d", "a.b.c"), "a": ["a.b.c"]}, 1000)
    assert json.dumps(found.claim, separators=(",", ":")) == '{"a":["a.b.c"],"z":["a.b.c","b.c.d"]}'
    assert found.size == len('{"a":["a.b.c"],"z":["a.b.c","b.c.d"]}')


def test_token_carries_its_grants_and_a_grants_change_reissues_it() -> None:
    sa = make_sa()
    reader = tokens.token_grants({"shop": ["shop.orders.read"]}, 2048)
    first = tokens.decide(sa, None, KEYSET, CFG, NOW, grants=reader)
    assert isinstance(first, tokens.Issue) and first.claims["grants"] == {"shop": ["shop.orders.read"]}
    later = NOW + datetime.timedelta(seconds=5)
    assert isinstance(tokens.decide(sa, first.facts, KEYSET, CFG, later, grants=reader), tokens.Keep)
    writer = tokens.token_grants({"shop": ["shop.orders.read", "shop.orders.write"]}, 2048)
    changed = tokens.decide(sa, first.facts, KEYSET, CFG, later, grants=writer)
    assert isinstance(changed, tokens.Issue) and changed.reason == "TokenReissued"
    assert changed.claims["grants"] == {"shop": ["shop.orders.read", "shop.orders.write"]}


def test_no_grants_is_an_explicit_empty_claim() -> None:
    assert issue(make_sa()).claims["grants"] == {}


def test_grants_over_the_cap_leave_the_claim_out_and_say_so_in_status() -> None:
    many = {f"tenant-{i:03d}": [f"tenant-{i:03d}.orders.read"] for i in range(200)}
    grants = tokens.token_grants(many, CFG.token_grants_max_bytes)
    assert grants.omitted and grants.size > CFG.token_grants_max_bytes
    sa = make_sa()
    decision = tokens.decide(sa, None, KEYSET, CFG, NOW, grants=grants)
    assert isinstance(decision, tokens.Issue) and "grants" not in decision.claims
    new = status.serviceaccount_status(sa, decision, NOW, grants)
    [condition] = [c for c in new["conditions"] if c["type"] == "TokenGrants"]
    assert condition["status"] == "False" and condition["reason"] == "GrantsTooLarge"
    assert str(grants.size) in condition["message"] and "trust bundle" in condition["message"]
    problem = [("GrantsTooLarge", grants.message())]
    assert status.to_warn(sa.status.wire(), problem, sa.metadata.generation) == problem  # first time: warn
    assert status.to_warn(new, problem, sa.metadata.generation) == []  # stored: never again for this generation
    assert status.to_warn(new, problem, (sa.metadata.generation or 0) + 1) == problem  # the object changed


def test_a_withdrawn_token_has_no_grants_condition() -> None:
    sa = make_sa()
    grants = tokens.token_grants({}, 2048)
    issued = status.serviceaccount_status(sa, issue(sa), NOW, grants)
    assert {c["type"] for c in issued["conditions"]} == {"Ready", "TokenGrants"}
    disabled = make_sa(disabled=True).model_copy(update={"status": sa_api.ServiceAccountStatus.model_validate(issued)})
    withdrawn = tokens.decide(disabled, None, KEYSET, CFG, NOW)
    assert [c["type"] for c in status.serviceaccount_status(disabled, withdrawn, NOW)["conditions"]] == ["Ready"]


def test_settings_bound_the_grants_cap() -> None:
    assert settings.Settings.from_env({}).token_delivery_seconds == 90
    assert settings.Settings.from_env({"TESSERA_TOKEN_DELIVERY_SECONDS": "30"}).refresh_margin_seconds == 60
    with pytest.raises(errors.ConfigError, match="TESSERA_TOKEN_DELIVERY_SECONDS"):
        settings.Settings.from_env({"TESSERA_TOKEN_DELIVERY_SECONDS": "-1"})
    assert settings.Settings.from_env({}).token_grants_max_bytes == settings.TOKEN_GRANTS_MAX_BYTES
    assert settings.Settings.from_env({"TESSERA_TOKEN_GRANTS_MAX_BYTES": "0"}).token_grants_max_bytes == 0
    for bad in ("-1", "100000", "lots"):
        with pytest.raises(errors.ConfigError, match=r"TESSERA_TOKEN_GRANTS_MAX_BYTES|not a number"):
            settings.Settings.from_env({"TESSERA_TOKEN_GRANTS_MAX_BYTES": bad})


def test_keeping_a_token_writes_no_status() -> None:
    """The Ready condition that announced a token stays until the next one, so a timer tick that
    keeps the token finds nothing to write (a change of message would be one write per account per tick)."""
    sa = make_sa()
    issued = issue(sa)
    after_issue = status.serviceaccount_status(sa, issued, NOW)
    stored = sa.model_copy(update={"status": sa_api.ServiceAccountStatus.model_validate(after_issue)})
    kept = tokens.decide(stored, issued.facts, KEYSET, CFG, NOW + datetime.timedelta(seconds=30))
    assert isinstance(kept, tokens.Keep)
    after_keep = status.serviceaccount_status(stored, kept, NOW + datetime.timedelta(seconds=30))
    assert not status.needs_update(after_issue, after_keep)
    failed = stored.model_copy(
        update={"status": sa_api.ServiceAccountStatus.model_validate(status.failed_status(stored, "X", "x", NOW))}
    )
    healed = status.serviceaccount_status(failed, kept, NOW)
    [ready] = [c for c in healed["conditions"] if c["type"] == "Ready"]
    assert (ready["status"], ready["message"]) == ("True", "the token is current")
