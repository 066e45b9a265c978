"""ServiceAccountKeys: plan paths, status, the index entry, the generated key's Secret, the CRD's CEL rules."""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tessera import errors
from tessera.api import kinds
from tessera.api import serviceaccountkey as sak_api
from tessera.core import accountkeys, status
from tessera.crypto import keys

NOW = datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.UTC)
LATER = "2026-12-22T12:00:00Z"
EARLIER = "2026-11-21T12:00:00Z"
SUBJECT = "urn:tessera:serviceaccount:shop:billing"

PRIVATE = {alg: keys.generate(alg) for alg in keys.ALGORITHMS}
PUBLIC = {alg: keys.public_of(private) for alg, private in PRIVATE.items()}
PEM = {alg: keys.public_pem(public) for alg, public in PUBLIC.items()}
JWK = {alg: keys.public_jwk(public) for alg, public in PUBLIC.items()}
WEAK_RSA_PEM = keys.public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key())  # noqa: S505
P384_PEM = keys.public_pem(ec.generate_private_key(ec.SECP384R1()).public_key())


def make_sak(generation: int = 1, status_: dict[str, Any] | None = None, **spec: Any) -> sak_api.ServiceAccountKey:
    return sak_api.ServiceAccountKey.parse(body(generation, status_, **spec))


def body(generation: int = 1, status_: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "iam.tessera.dev/v1alpha1",
        "kind": "ServiceAccountKey",
        "metadata": {"name": "billing-key", "namespace": "shop", "uid": "u-1", "generation": generation},
        "spec": {"serviceAccountName": "billing", **spec},
        "status": status_ or {},
    }


def material(spec: dict[str, Any]) -> list[str]:
    """Every piece of key material in a spec: PEM lines and JWK members."""
    found = []
    pem = spec.get("publicKey", {}).get("pem") or ""
    found += [line for line in pem.splitlines() if len(line) >= 16 and not line.startswith("-----")]
    jwk = spec.get("publicKey", {}).get("jwk") or {}
    found += [jwk[m] for m in ("x", "y", "n", "d") if m in jwk]
    return found


REGISTER, REJECT, INACTIVE = accountkeys.Register, accountkeys.Reject, accountkeys.Inactive
GARBAGE_PEM = "-----BEGIN PUBLIC KEY-----\nAAAAAAAAAAAAAAAAAAAAAAAA\n-----END PUBLIC KEY-----\n"


def pem(algorithm: keys.Algorithm, **spec: Any) -> dict[str, Any]:
    return {"publicKey": {"pem": PEM[algorithm]}, **spec}


def jwk(algorithm: keys.Algorithm, **members: Any) -> dict[str, Any]:
    return {"publicKey": {"jwk": {**JWK[algorithm], **members}}}


def case(
    id_: str,
    spec: dict[str, Any],
    kind: type,
    reason: str,
    exists: bool = True,
    generated: keys.Algorithm | None = None,
) -> Any:
    return pytest.param(spec, exists, PUBLIC[generated] if generated else None, kind, reason, id=id_)


PLAN_CASES = [
    case("disabled", pem("ES256", disabled=True), INACTIVE, "Disabled"),
    case("expired", pem("ES256", expiresAt=EARLIER), INACTIVE, "Expired"),
    case("expires-now", pem("ES256", expiresAt=NOW.isoformat()), INACTIVE, "Expired"),
    case(
        "disabled-first",
        {"publicKey": {"pem": "junk"}, "disabled": True, "expiresAt": EARLIER},
        INACTIVE,
        "Disabled",
        exists=False,
    ),
    case("expired-before-missing", pem("ES256", expiresAt=EARLIER), INACTIVE, "Expired", exists=False),
    case("missing-account", pem("ES256"), REJECT, "ServiceAccountNotFound", exists=False),
    case("missing-before-invalid", {"publicKey": {"pem": "junk"}}, REJECT, "ServiceAccountNotFound", exists=False),
    case("garbage-pem", {"publicKey": {"pem": GARBAGE_PEM}}, REJECT, "InvalidKey"),
    case("rsa-1024", {"publicKey": {"pem": WEAK_RSA_PEM}}, REJECT, "InvalidKey"),
    case("ec-p384", {"publicKey": {"pem": P384_PEM}}, REJECT, "InvalidKey"),
    case("jwk-private-member", jwk("ES256", d="c2VjcmV0LXNjYWxhci12YWx1ZQ"), REJECT, "InvalidKey"),
    case("jwk-wrong-kid", jwk("ES256", kid="my-laptop"), REJECT, "InvalidKey"),
    case("jwk-wrong-alg", jwk("ES256", alg="RS256"), REJECT, "InvalidKey"),
    case("jwk-wrong-use", jwk("EdDSA", use="enc"), REJECT, "InvalidKey"),
    case(
        "jwk-p384",
        {"publicKey": {"jwk": {"kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA"}}},
        REJECT,
        "InvalidKey",
    ),
    case("pem-and-jwk", {"publicKey": {"pem": PEM["ES256"], "jwk": JWK["ES256"]}}, REJECT, "InvalidKey"),
    case("generated-wrong-algorithm", {"generate": {"algorithm": "ES256"}}, REJECT, "InvalidKey", generated="EdDSA"),
    case("pem-es256", pem("ES256"), REGISTER, "KeyRegistered"),
    case("pem-eddsa", pem("EdDSA"), REGISTER, "KeyRegistered"),
    case("pem-rs256-expiring", pem("RS256", expiresAt=LATER), REGISTER, "KeyRegistered"),
    case("jwk-es256", jwk("ES256"), REGISTER, "KeyRegistered"),
    case(
        "jwk-eddsa-bare",
        {"publicKey": {"jwk": {k: JWK["EdDSA"][k] for k in ("kty", "crv", "x")}}},
        REGISTER,
        "KeyRegistered",
    ),
    case("jwk-rs256", jwk("RS256"), REGISTER, "KeyRegistered"),
    case("generated", {"generate": {"algorithm": "RS256"}}, REGISTER, "KeyGenerated", generated="RS256"),
    case("generated-default", {"generate": {}}, REGISTER, "KeyGenerated", generated="ES256"),
    case("generated-disabled-before-generation", {"generate": {}, "disabled": True}, INACTIVE, "Disabled"),
]


@pytest.mark.parametrize(("spec", "exists", "generated", "kind", "reason"), PLAN_CASES)
def test_plan(spec: dict[str, Any], exists: bool, generated: keys.PublicKey | None, kind: type, reason: str) -> None:
    decided = accountkeys.plan(make_sak(**spec), exists, generated, NOW)
    assert type(decided) is kind and decided.reason == reason, decided.message
    assert "-----BEGIN" not in decided.message and "PRIVATE" not in decided.message
    for piece in material(spec):
        assert piece not in decided.message
    if isinstance(decided, accountkeys.Register):
        assert keys.thumbprint(decided.public_key) in decided.message


def test_a_generated_key_must_be_generated_before_planning() -> None:
    with pytest.raises(ValueError, match="before planning"):
        accountkeys.plan(make_sak(generate={}), True, None, NOW)


def test_missing_account_is_named_with_its_namespace() -> None:
    decided = accountkeys.plan(make_sak(publicKey={"pem": PEM["ES256"]}), False, None, NOW)
    assert "billing" in decided.message and "shop" in decided.message


@pytest.mark.parametrize(
    ("jwk", "match"),
    [
        ({**JWK["ES256"], "kid": "laptop"}, "RFC 7638 thumbprint"),
        ({**JWK["ES256"], "alg": "EdDSA"}, "signs ES256"),
        ({**JWK["RS256"], "qi": "AAAA"}, "private key members"),
    ],
)
def test_public_key_from_spec_explains_inconsistent_jwks(jwk: dict[str, Any], match: str) -> None:
    with pytest.raises(errors.KeyMaterialError, match=match):
        accountkeys.public_key_from_spec(make_sak(publicKey={"jwk": jwk}).spec)


@pytest.mark.parametrize("algorithm", keys.ALGORITHMS)
def test_pem_and_jwk_of_one_key_are_the_same_key(algorithm: keys.Algorithm) -> None:
    from_pem = accountkeys.public_key_from_spec(make_sak(publicKey={"pem": PEM[algorithm]}).spec)
    from_jwk = accountkeys.public_key_from_spec(make_sak(publicKey={"jwk": JWK[algorithm]}).spec)
    assert keys.thumbprint(from_pem) == keys.thumbprint(from_jwk) == JWK[algorithm]["kid"]


def ready(wire: dict[str, Any]) -> dict[str, Any]:
    [condition] = [c for c in wire["conditions"] if c["type"] == "Ready"]
    assert isinstance(condition, dict)
    return condition


def test_status_of_a_registered_key_shows_its_public_facts() -> None:
    sak = make_sak(publicKey={"pem": PEM["ES256"]}, expiresAt=LATER)
    wire = accountkeys.status(sak, accountkeys.plan(sak, True, None, NOW), NOW)
    assert ready(wire)["status"] == "True" and ready(wire)["reason"] == "KeyRegistered"
    assert wire["keyId"] == keys.thumbprint(PUBLIC["ES256"])
    assert wire["algorithm"] == "ES256" and wire["fingerprint"] == keys.fingerprint(PUBLIC["ES256"])
    assert wire["publicKey"] == PEM["ES256"] and wire["subject"] == SUBJECT
    assert wire["expiresAt"] == LATER and wire["observedGeneration"] == 1 and wire["secretName"] is None


def test_status_of_a_generated_key_names_its_secret() -> None:
    sak = make_sak(generate={"algorithm": "EdDSA"})
    wire = accountkeys.status(sak, accountkeys.plan(sak, True, PUBLIC["EdDSA"], NOW), NOW)
    assert ready(wire)["reason"] == "KeyGenerated" and wire["secretName"] == "billing-key-tessera-key"
    assert wire["keyId"] == keys.thumbprint(PUBLIC["EdDSA"])


def test_status_of_a_disabled_key_is_not_ready_but_keeps_the_key_facts() -> None:
    sak = make_sak(publicKey={"pem": PEM["RS256"]}, disabled=True)
    wire = accountkeys.status(sak, accountkeys.plan(sak, True, None, NOW), NOW)
    assert ready(wire)["status"] == "False" and ready(wire)["reason"] == "Disabled"
    assert wire["keyId"] == keys.thumbprint(PUBLIC["RS256"]) and wire["fingerprint"].startswith("SHA256:")


def test_status_of_an_invalid_key_clears_the_key_facts() -> None:
    registered = accountkeys.Register(PUBLIC["ES256"], "KeyRegistered", "ok")
    previous = accountkeys.status(make_sak(**pem("ES256")), registered, NOW)
    sak = make_sak(status_=previous, publicKey={"pem": WEAK_RSA_PEM})
    wire = accountkeys.status(sak, accountkeys.plan(sak, True, None, NOW), NOW)
    assert ready(wire)["status"] == "False" and ready(wire)["reason"] == "InvalidKey"
    assert "too weak" in ready(wire)["message"]
    assert all(wire[k] is None for k in ("keyId", "algorithm", "fingerprint", "publicKey"))


def test_status_is_stable_when_nothing_changed() -> None:
    sak = make_sak(publicKey={"pem": PEM["ES256"]})
    first = accountkeys.status(sak, accountkeys.plan(sak, True, None, NOW), NOW)
    again = make_sak(status_=first, publicKey={"pem": PEM["ES256"]})
    later = NOW + datetime.timedelta(hours=1)
    second = accountkeys.status(again, accountkeys.plan(again, True, None, later), later)
    assert not status.needs_update(first, second)


def registered_body(generation: int = 1, observed: int = 1, **spec: Any) -> dict[str, Any]:
    sak = make_sak(generation, **spec)
    wire = accountkeys.status(sak, accountkeys.plan(sak, True, None, NOW), NOW)
    return body(generation, {**wire, "observedGeneration": observed}, **spec)


def test_registered_gives_the_bundle_entry_of_a_ready_key() -> None:
    entry = accountkeys.registered(registered_body(publicKey={"jwk": JWK["EdDSA"]}, expiresAt=LATER))
    assert entry is not None
    kid = keys.thumbprint(PUBLIC["EdDSA"])
    assert (entry.namespace, entry.name, entry.subject, entry.kid, entry.algorithm) == (
        "shop",
        "billing-key",
        SUBJECT,
        kid,
        "EdDSA",
    )
    assert entry.jwk == {**JWK["EdDSA"], "sub": SUBJECT, "exp": int(datetime.datetime.fromisoformat(LATER).timestamp())}
    assert entry.expires_at == datetime.datetime.fromisoformat(LATER)


@pytest.mark.parametrize("algorithm", keys.ALGORITHMS)
def test_registered_entry_without_expiry_has_no_exp(algorithm: keys.Algorithm) -> None:
    entry = accountkeys.registered(registered_body(**pem(algorithm)))
    assert entry is not None and "exp" not in entry.jwk and entry.expires_at is None
    assert entry.jwk == {**JWK[algorithm], "sub": SUBJECT} and entry.algorithm == algorithm


def _tampered_kid() -> dict[str, Any]:
    tampered = registered_body(publicKey={"pem": PEM["ES256"]})
    tampered["status"]["keyId"] = keys.thumbprint(PUBLIC["EdDSA"])
    return tampered


def _rejected_for_missing_account() -> dict[str, Any]:
    rejected = accountkeys.Reject("ServiceAccountNotFound", "no such account", PUBLIC["ES256"])
    return body(1, accountkeys.status(make_sak(**pem("ES256")), rejected, NOW), **pem("ES256"))


def _flipped_disabled() -> dict[str, Any]:
    flipped = registered_body(publicKey={"pem": PEM["ES256"]})
    flipped["spec"]["disabled"] = True
    return flipped


NOT_REGISTERED: list[tuple[str, Any]] = [
    ("disabled", _flipped_disabled()),
    ("not-ready", registered_body(publicKey={"pem": WEAK_RSA_PEM})),
    ("missing-account", _rejected_for_missing_account()),
    ("stale-observed-generation", registered_body(generation=3, observed=2, publicKey={"pem": PEM["ES256"]})),
    ("no-status", body(1, None, publicKey={"pem": PEM["ES256"]})),
    ("kid-not-the-thumbprint", _tampered_kid()),
    ("garbage-status-pem", {**_tampered_kid(), "status": {**_tampered_kid()["status"], "publicKey": "junk"}}),
    ("empty", {}),
    ("spec-not-an-object", {"metadata": {"name": "x", "generation": 1}, "spec": "x"}),
    ("not-a-mapping", "garbage"),
    ("none", None),
]


@pytest.mark.parametrize("bad", [c[1] for c in NOT_REGISTERED], ids=[c[0] for c in NOT_REGISTERED])
def test_registered_is_none_and_never_raises(bad: Any) -> None:
    assert accountkeys.registered(bad) is None


def entry(expires_at: datetime.datetime | None) -> accountkeys.RegisteredKey:
    return accountkeys.RegisteredKey("shop", "k", SUBJECT, "kid", "ES256", {}, expires_at)


def test_active_and_next_expiry() -> None:
    soon, later = NOW + datetime.timedelta(minutes=5), NOW + datetime.timedelta(days=1)
    entries = [entry(None), entry(NOW - datetime.timedelta(seconds=1)), entry(NOW), entry(later), entry(soon)]
    assert [accountkeys.active(e, NOW) for e in entries] == [True, False, False, True, True]
    assert accountkeys.next_expiry(entries, NOW) == soon
    assert accountkeys.next_expiry([entry(None), entry(NOW)], NOW) is None


def decoded(secret: dict[str, Any], name: str) -> str:
    return base64.b64decode(secret["data"][name]).decode()


@pytest.mark.parametrize("algorithm", keys.ALGORITHMS)
def test_key_secret_round_trips_and_tells_the_workload_what_to_sign_with(algorithm: keys.Algorithm) -> None:
    sak = make_sak(generate={"algorithm": algorithm})
    secret = accountkeys.build_key_secret(sak, PRIVATE[algorithm])
    kid = keys.thumbprint(PUBLIC[algorithm])
    back = accountkeys.private_key_from_secret(secret)
    assert keys.thumbprint(keys.public_of(back)) == kid
    assert secret["type"] == accountkeys.KEY_SECRET_TYPE
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("ServiceAccountKey", "billing-key", True)
    assert secret["metadata"]["name"] == accountkeys.key_secret_name(sak) and secret["metadata"]["namespace"] == "shop"
    assert secret["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "tessera",
        "iam.tessera.dev/component": "service-account-key",
        accountkeys.KEY_FOR_LABEL: "billing-key",
    }
    assert secret["metadata"]["annotations"] == {"iam.tessera.dev/key-id": kid}
    assert decoded(secret, "key-id") == kid and decoded(secret, "subject") == SUBJECT
    assert keys.thumbprint(keys.public_of(keys.load_private_pem(decoded(secret, "private-key.pem")))) == kid
    jwk = json.loads(decoded(secret, "private-key.jwk"))
    assert jwk["kid"] == kid and jwk["alg"] == algorithm and jwk["use"] == "sig" and "d" in jwk
    public_part = {k: v for k, v in jwk.items() if k not in sak_api.PRIVATE_JWK_MEMBERS}
    assert keys.thumbprint(keys.load_jwk(public_part)) == kid
    assert accountkeys.plan(sak, True, keys.public_of(back), NOW).reason == "KeyGenerated"


def _secret_with(pem_b64: str | None) -> dict[str, Any]:
    data = {} if pem_b64 is None else {"private-key.pem": pem_b64}
    return {"metadata": {"name": "billing-key-tessera-key"}, "data": data}


TRUNCATED = keys.private_pem(PRIVATE["ES256"])[:120]


@pytest.mark.parametrize(
    "secret",
    [
        _secret_with(None),
        _secret_with("not base64 at all!"),
        _secret_with(base64.b64encode(b"\xff\xfe binary").decode()),
        _secret_with(base64.b64encode(TRUNCATED.encode()).decode()),
        _secret_with(base64.b64encode(keys.public_pem(PUBLIC["ES256"]).encode()).decode()),
        {},
    ],
    ids=["no-data", "not-base64", "not-ascii", "truncated-pem", "public-pem", "empty"],
)
def test_unreadable_key_secret_is_refused_without_echoing_it(secret: dict[str, Any]) -> None:
    with pytest.raises(errors.KeyMaterialError) as caught:
        accountkeys.private_key_from_secret(secret)
    message = str(caught.value)
    assert "-----BEGIN" not in message and TRUNCATED.splitlines()[1] not in message
    assert caught.value.__cause__ is None or "PRIVATE" not in str(caught.value.__cause__)


SAK_KIND = next(k for k in kinds.ALL if k.info.kind == "ServiceAccountKey")


def test_crd_carries_the_cel_rules() -> None:
    crd = SAK_KIND.crd()
    assert crd["metadata"]["name"] == "serviceaccountkeys.iam.tessera.dev"
    assert crd["spec"]["names"]["shortNames"] == ["tsakey", "tessera-sakey"]
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]

    def rules(node: dict[str, Any]) -> set[str]:
        return {r["rule"] for r in node.get("x-kubernetes-validations", [])}

    assert rules(spec) == {
        "has(self.publicKey) != has(self.generate)",
        "has(self.publicKey) == has(oldSelf.publicKey) && has(self.generate) == has(oldSelf.generate)",
    }
    assert rules(props["serviceAccountName"]) == {"self == oldSelf"}
    assert rules(props["publicKey"]) == {"has(self.pem) != has(self.jwk)", "self == oldSelf"}
    assert rules(props["generate"]) == {"self == oldSelf"}
    jwk_rules = rules(props["publicKey"]["properties"]["jwk"])
    assert len(jwk_rules) == 1 and all(f"!has(self.{m})" in next(iter(jwk_rules)) for m in sak_api.PRIVATE_JWK_MEMBERS)
    assert props["generate"]["properties"]["algorithm"]["enum"] == ["ES256", "EdDSA", "RS256"]
    assert props["expiresAt"]["format"] == "date-time"
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["Ready", "Reason", "Account", "Key ID", "Algorithm", "Expires", "Age"]
