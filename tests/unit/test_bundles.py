"""Trust bundle content: deterministic bytes, expiry, ambiguity, accounts gone or disabled, size, timing."""

from __future__ import annotations

import dataclasses
import datetime
import json

from hypothesis import given
from hypothesis import strategies as st

from tessera import trustbundle
from tessera.core import accountkeys, bundles, issuer, revocations
from tessera.crypto import keys

NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)
KEYSET = issuer.initial("ES256", NOW)
BILLING = "urn:tessera:serviceaccount:shop:billing"
LEDGER = "urn:tessera:serviceaccount:shop:ledger"


def registered(
    name: str, subject: str, key: keys.PublicKey, expires: datetime.datetime | None = None
) -> accountkeys.RegisteredKey:
    kid = keys.thumbprint(key)
    jwk = {**keys.public_jwk(key, kid), "sub": subject}
    if expires is not None:
        jwk["exp"] = int(expires.timestamp())
    return accountkeys.RegisteredKey("shop", name, subject, kid, keys.algorithm_for(key), jwk, expires)


def accounts(*subjects: str, disabled: tuple[str, ...] = ()) -> list[bundles.Account]:
    return [bundles.Account(s, ("10.0.0.0/8",) if s == BILLING else (), s in disabled) for s in subjects]


def inputs(**changes: object) -> bundles.Inputs:
    base: dict[str, object] = {
        "issuer_url": "https://issuer.test",
        "issuer_jwks": issuer.jwks(KEYSET),
        "account_keys": [],
        "revocations": {},
        "accounts": accounts(BILLING, LEDGER),
    }
    return bundles.Inputs(**{**base, **changes})  # type: ignore[arg-type]


def test_equal_inputs_render_equal_bytes_whatever_their_order() -> None:
    a = registered("a", BILLING, keys.generate("ES256").public_key())
    b = registered("b", LEDGER, keys.generate("EdDSA").public_key())
    one = bundles.render(bundles.document(inputs(account_keys=[a, b]), NOW))
    two = bundles.render(bundles.document(inputs(account_keys=[b, a], accounts=accounts(LEDGER, BILLING)), NOW))
    assert one == two
    doc = json.loads(one)
    assert doc["version"] == 1 and doc["issuer"] == "https://issuer.test"
    assert [k["kid"] for k in doc["issuerKeys"]["keys"]] == [KEYSET[0].kid]
    assert [k["kid"] for k in doc["serviceAccountKeys"]["keys"]] == sorted([a.kid, b.kid])
    assert doc["accounts"] == {BILLING: {"cidrs": ["10.0.0.0/8"]}}
    assert all("d" not in k for k in doc["serviceAccountKeys"]["keys"] + doc["issuerKeys"]["keys"])


def test_expired_keys_leave_and_their_expiry_is_the_next_change() -> None:
    soon = NOW + datetime.timedelta(minutes=5)
    key = registered("a", BILLING, keys.generate("ES256").public_key(), expires=soon)
    current = inputs(account_keys=[key])
    assert len(bundles.document(current, NOW).account_keys) == 1
    assert bundles.next_change(current, NOW) == soon
    assert bundles.document(current, soon).account_keys == ()


def test_a_kid_claimed_by_two_subjects_is_trusted_for_neither() -> None:
    public = keys.generate("ES256").public_key()
    doc = bundles.document(
        inputs(account_keys=[registered("a", BILLING, public), registered("b", LEDGER, public)]), NOW
    )
    assert doc.account_keys == ()


def test_keys_of_deleted_or_disabled_accounts_leave_at_once() -> None:
    key = registered("a", BILLING, keys.generate("ES256").public_key())
    assert bundles.document(inputs(account_keys=[key], accounts=accounts(LEDGER)), NOW).account_keys == ()
    disabled = accounts(BILLING, disabled=(BILLING,))
    assert bundles.document(inputs(account_keys=[key], accounts=disabled), NOW).account_keys == ()


def test_revocations_appear_until_pruned() -> None:
    revoked = revocations.revoke({}, BILLING, NOW, NOW + datetime.timedelta(minutes=1), datetime.timedelta(seconds=60))
    current = inputs(revocations=revoked)
    doc = bundles.document(current, NOW)
    assert doc.revocations == (trustbundle.Revocation(BILLING, int(NOW.timestamp())),)
    prune_at = revoked[BILLING].prune_after
    assert bundles.next_change(current, NOW) == prune_at
    assert bundles.document(current, prune_at).revocations == ()


def test_size_limit_and_configmap_shape() -> None:
    text = bundles.render(bundles.document(inputs(), NOW))
    assert bundles.fits(text, len(text)) and not bundles.fits(text, len(text) - 1)
    manifest = bundles.build_configmap("shop", {"bundle.json": text})
    assert manifest["metadata"]["name"] == "tessera-trust-bundle"
    assert manifest["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "tessera"
    assert manifest["data"] == {"bundle.json": text} and "resourceVersion" not in manifest["metadata"]
    assert bundles.build_configmap("shop", {"bundle.json": text}, "42")["metadata"]["resourceVersion"] == "42"


# --- sequences -------------------------------------------------------------------------------------

LATER = NOW + datetime.timedelta(seconds=1)


def sequence_of(data: dict[str, str] | None) -> int | None:
    assert data is not None
    return trustbundle.parse(data["bundle.json"]).sequence


def test_a_first_bundle_starts_its_sequence_at_the_current_millisecond() -> None:
    content = bundles.render(bundles.document(inputs(), NOW))
    data = bundles.planned_data(content, None, None, NOW)
    assert sequence_of(data) == int(NOW.timestamp() * 1000)
    assert data is not None and set(data) == {"bundle.json"}


def test_unchanged_content_is_not_rewritten_whatever_its_sequence() -> None:
    content = bundles.render(bundles.document(inputs(), NOW))
    held = bundles.planned_data(content, None, None, NOW)
    assert bundles.planned_data(content, None, held, LATER) is None


def test_changed_content_gets_the_next_sequence_even_when_the_clock_is_behind() -> None:
    before = bundles.render(bundles.document(inputs(), NOW))
    ahead = {"bundle.json": bundles.render(dataclasses.replace(trustbundle.parse(before), sequence=9 * 10**12))}
    after = bundles.render(bundles.document(inputs(accounts=accounts(LEDGER)), NOW))
    assert sequence_of(bundles.planned_data(after, None, ahead, LATER)) == 9 * 10**12 + 1
    held = bundles.planned_data(before, None, None, NOW)
    assert sequence_of(bundles.planned_data(after, None, held, NOW)) == int(NOW.timestamp() * 1000) + 1


def test_an_unsequenced_or_unreadable_bundle_is_replaced_by_a_sequenced_one() -> None:
    content = bundles.render(bundles.document(inputs(), NOW))
    for held in ({"bundle.json": content}, {"bundle.json": "{not json"}):
        assert sequence_of(bundles.planned_data(content, None, held, NOW)) == int(NOW.timestamp() * 1000)


def test_the_issuer_ca_travels_beside_the_bundle_and_a_new_one_is_written() -> None:
    content = bundles.render(bundles.document(inputs(), NOW))
    held = bundles.planned_data(content, "CA 1", None, NOW)
    assert held is not None and held["issuer-ca.crt"] == "CA 1"
    assert bundles.planned_data(content, "CA 1", held, LATER) is None
    renewed = bundles.planned_data(content, "CA 2", held, LATER)
    assert renewed is not None and renewed["issuer-ca.crt"] == "CA 2"
    assert (sequence_of(renewed) or 0) > (sequence_of(held) or 0)


def test_keys_someone_added_beside_the_bundle_get_it_rewritten_without_them() -> None:
    content = bundles.render(bundles.document(inputs(), NOW))
    held = bundles.planned_data(content, None, None, NOW)
    assert held is not None
    rewritten = bundles.planned_data(content, None, {**held, "extra.json": "{}"}, LATER)
    assert rewritten is not None and set(rewritten) == {"bundle.json"}
    assert (sequence_of(rewritten) or 0) > (sequence_of(held) or 0)


def test_what_a_configmap_holds_is_compared_whatever_its_sequence() -> None:
    content = bundles.render(bundles.document(inputs(), NOW))
    first = bundles.planned_data(content, "CA", None, NOW)
    resequenced = bundles.planned_data(content, "CA", {"bundle.json": content}, LATER)  # unsequenced: rewritten
    assert first is not None and resequenced is not None and sequence_of(first) != sequence_of(resequenced)
    assert bundles.held_content(first) == bundles.held_content(resequenced) == (content, "CA")
    for damaged in (None, {}, {"bundle.json": content}, {"bundle.json": "{not json"}, {**first, "x": "y"}):
        assert bundles.held_content(damaged) is None


# --- which account events wake the publisher ---------------------------------------------------------------

PLAIN = bundles.Account(LEDGER, (), False)
RANGED = bundles.Account(LEDGER, ("10.0.0.0/8",), False)
DISABLED = bundles.Account(LEDGER, (), True)
LEDGER_KEY = keys.generate("ES256").public_key()
BILLING_KEY = keys.generate("ES256").public_key()


def test_a_plain_account_coming_or_going_wakes_nothing_unless_keys_are_registered_for_it() -> None:
    assert not bundles.wakes_publisher(None, PLAIN, keyed=False)
    assert not bundles.wakes_publisher(None, None, keyed=False)
    assert bundles.wakes_publisher(None, PLAIN, keyed=True)
    assert bundles.wakes_publisher(None, None, keyed=True)


def test_ranges_and_disabling_wake_the_publisher_when_they_change() -> None:
    assert bundles.wakes_publisher(None, RANGED, keyed=False)
    assert bundles.wakes_publisher(bundles.notable(RANGED), PLAIN, keyed=False)
    assert bundles.wakes_publisher(bundles.notable(RANGED), None, keyed=False)
    assert not bundles.wakes_publisher(bundles.notable(RANGED), RANGED, keyed=False)
    assert bundles.wakes_publisher(None, DISABLED, keyed=False)
    assert bundles.notable(PLAIN) is None and bundles.notable(DISABLED) == DISABLED


FACTS = st.builds(
    bundles.Account,
    st.just(LEDGER),
    st.sampled_from([(), ("10.0.0.0/8",), ("10.0.0.0/8", "192.168.0.0/16")]),
    st.booleans(),
)


@given(
    before=st.none() | FACTS,
    after=st.none() | FACTS,
    others=st.lists(FACTS.map(lambda a: dataclasses.replace(a, subject=BILLING)), max_size=1),
    keyed=st.booleans(),
)
def test_an_account_event_that_wakes_nothing_leaves_every_bundle_as_it_was(
    before: bundles.Account | None, after: bundles.Account | None, others: list[bundles.Account], keyed: bool
) -> None:
    key = registered("a", LEDGER, LEDGER_KEY)
    other_key = registered("b", BILLING, BILLING_KEY)
    keys = [key, other_key] if keyed else [other_key]

    def doc(account: bundles.Account | None) -> str:
        present = [*others, *([account] if account is not None else [])]
        return bundles.render(bundles.document(inputs(account_keys=keys, accounts=present), NOW))

    if not bundles.wakes_publisher(bundles.notable(before), after, keyed):
        assert doc(before) == doc(after)
