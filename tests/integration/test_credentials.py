"""Credentials end to end on the real API server: ServiceAccountKeys supplied (via `tessera keygen`)
and generated, trust bundles in opted-in namespaces, keys leaving the bundle on disable, expiry and
deletion, revocation on disable and delete (re-enabling not blocked, pruning), bad input at apply
time and at run time, and bundle writes only on change.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import kubernetes
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tessera.crypto import keys
from tests import waiting
from tests.harness import Cluster, Operator
from tests.resources import (
    SA,
    SAK,
    apply,
    bundle,
    bundle_kids,
    condition,
    leaks_private_key,
    manifest,
    opt_in,
    reason_is,
    token_in,
    verify_self_signed,
    warnings,
)


def self_signed(private_pem: str, kid: str, subject: str, audience: str = "ledger") -> str:
    now = int(time.time())
    claims = {"iss": subject, "sub": subject, "aud": audience, "iat": now, "exp": now + 60}
    private = keys.load_private_pem(private_pem)
    return jwt.encode(claims, private, algorithm=keys.algorithm_for(private.public_key()), headers={"kid": kid})


def keygen(cluster: Cluster, namespace: str, account: str, out: Path, *extra: str) -> dict[str, Any]:
    """`tessera keygen ... | kubectl apply -f -`, as the README tells users; returns the manifest."""
    args = ["--service-account", account, "--namespace", namespace, "--private-key-out", str(out), *extra]
    made = subprocess.run(
        [sys.executable, "-m", "tessera.cli", "keygen", *args], capture_output=True, text=True, check=True
    )
    assert "PRIVATE KEY" not in made.stdout
    cluster.kubectl("apply", "-f", "-", stdin=made.stdout)
    document: dict[str, Any] = yaml.safe_load(made.stdout)
    return document


def test_a_supplied_key_verifies_its_workloads_tokens_until_disabled_or_deleted(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path
) -> None:
    opt_in(cluster, namespace)
    apply(cluster, namespace, SA, "app", {})
    made = keygen(cluster, namespace, "app", tmp_path / "app.pem", "--algorithm", "EdDSA", "--name", "app-laptop")
    waiting.until(lambda: reason_is(cluster, namespace, SAK, "app-laptop", "KeyRegistered"), what="KeyRegistered")
    private_pem = (tmp_path / "app.pem").read_text()
    kid = keys.thumbprint(keys.load_private_pem(private_pem).public_key())
    status = cluster.custom_object(namespace, SAK, "app-laptop")["status"]
    assert status["keyId"] == kid and status["algorithm"] == "EdDSA" and "PRIVATE" not in json.dumps(status)
    assert made["spec"]["publicKey"]["pem"].strip() == status["publicKey"].strip()

    waiting.until(lambda: kid in bundle_kids(cluster, namespace, "serviceAccountKeys"), what="the key in the bundle")
    subject = f"urn:tessera:serviceaccount:{namespace}:app"
    claims = verify_self_signed(self_signed(private_pem, kid, subject), bundle(cluster, namespace) or {}, "ledger")
    assert claims["iss"] == subject

    apply(cluster, namespace, SAK, "app-laptop", {**made["spec"], "disabled": True})
    waiting.until(lambda: kid not in bundle_kids(cluster, namespace, "serviceAccountKeys"), what="disabled: gone")
    waiting.until(lambda: reason_is(cluster, namespace, SAK, "app-laptop", "Disabled"), what="Disabled")
    apply(cluster, namespace, SAK, "app-laptop", {**made["spec"], "disabled": False})
    waiting.until(lambda: kid in bundle_kids(cluster, namespace, "serviceAccountKeys"), what="enabled: back")
    cluster.kubectl("delete", "-n", namespace, "serviceaccountkeys.iam.tessera.dev/app-laptop")
    waiting.until(lambda: kid not in bundle_kids(cluster, namespace, "serviceAccountKeys"), what="deleted: gone")


def test_a_generated_private_key_lives_only_in_its_secret(cluster: Cluster, operator: Operator, namespace: str) -> None:
    opt_in(cluster, namespace)
    apply(cluster, namespace, SA, "batch", {})
    apply(cluster, namespace, SAK, "batch-key", {"serviceAccountName": "batch", "generate": {"algorithm": "ES256"}})
    waiting.until(lambda: reason_is(cluster, namespace, SAK, "batch-key", "KeyGenerated"), what="KeyGenerated")
    status = cluster.custom_object(namespace, SAK, "batch-key")["status"]
    secret = cluster.secret(namespace, status["secretName"])
    assert secret is not None and secret["type"] == "iam.tessera.dev/service-account-key"
    [owner] = secret["metadata"]["ownerReferences"]
    assert owner["kind"] == "ServiceAccountKey" and owner["name"] == "batch-key"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["key-id"] == status["keyId"] and data["subject"].endswith(f":{namespace}:batch")
    assert json.loads(data["private-key.jwk"])["kid"] == status["keyId"]

    waiting.until(lambda: status["keyId"] in bundle_kids(cluster, namespace, "serviceAccountKeys"), what="in bundle")
    token = self_signed(data["private-key.pem"], data["key-id"], data["subject"], audience="payments")
    assert verify_self_signed(token, bundle(cluster, namespace) or {}, "payments")["sub"] == data["subject"]

    events = json.dumps(cluster.to_dict(cluster.core.list_namespaced_event(namespace)))
    everywhere = {"status": json.dumps(status), "events": events, "operator log": operator.logs()}
    for where, text in everywhere.items():
        leaked = leaks_private_key(data["private-key.pem"], text)  # (not in the assert: pytest would print it)
        assert not leaked, f"private key material in {where}"


def test_an_expiring_key_leaves_the_bundle_when_it_expires(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    opt_in(cluster, namespace)
    apply(cluster, namespace, SA, "cron", {})
    expires = datetime.datetime.now(datetime.UTC).replace(microsecond=0) + datetime.timedelta(seconds=8)
    spec = {"serviceAccountName": "cron", "generate": {"algorithm": "EdDSA"}, "expiresAt": expires.isoformat()}
    apply(cluster, namespace, SAK, "cron-key", spec)
    waiting.until(lambda: reason_is(cluster, namespace, SAK, "cron-key", "KeyGenerated"), what="KeyGenerated")
    kid = cluster.custom_object(namespace, SAK, "cron-key")["status"]["keyId"]
    waiting.until(lambda: kid in bundle_kids(cluster, namespace, "serviceAccountKeys"), what="in the bundle")
    [entry] = [k for k in (bundle(cluster, namespace) or {})["serviceAccountKeys"]["keys"] if k["kid"] == kid]
    assert entry["exp"] == int(expires.timestamp())
    waiting.until(lambda: kid not in bundle_kids(cluster, namespace, "serviceAccountKeys"), timeout=30, what="gone")
    assert datetime.datetime.now(datetime.UTC) >= expires
    waiting.until(lambda: reason_is(cluster, namespace, SAK, "cron-key", "Expired"), timeout=30, what="Expired")


def _rsa_1024_pem() -> str:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505 (on purpose)
    return weak.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _p384_pem() -> str:
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


RUNTIME_BAD: dict[str, tuple[dict[str, Any], str]] = {
    "garbage-pem": ({"publicKey": {"pem": "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"}}, "PEM"),
    "weak-rsa": ({"publicKey": {"pem": _rsa_1024_pem()}}, "too weak"),
    "p384": ({"publicKey": {"pem": _p384_pem()}}, "P-256"),
}


@pytest.mark.parametrize("case", sorted(RUNTIME_BAD))
def test_unusable_keys_get_ready_false_and_one_warning(
    cluster: Cluster, operator: Operator, namespace: str, case: str
) -> None:
    apply(cluster, namespace, SA, "owner", {})
    spec, message = RUNTIME_BAD[case]
    apply(cluster, namespace, SAK, case, {"serviceAccountName": "owner", **spec})
    waiting.until(lambda: reason_is(cluster, namespace, SAK, case, "InvalidKey"), what="InvalidKey")
    ready = condition(cluster, namespace, SAK, case)
    assert ready["status"] == "False" and message in ready["message"]
    waiting.until(lambda: warnings(cluster, namespace, "InvalidKey", case), what="a Warning event")
    assert message in warnings(cluster, namespace, "InvalidKey", case)[0]["message"]
    assert operator.process.poll() is None


def test_a_key_for_a_missing_account_heals_when_the_account_appears(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    apply(cluster, namespace, SAK, "early", {"serviceAccountName": "later", "generate": {}})
    waiting.until(lambda: reason_is(cluster, namespace, SAK, "early", "ServiceAccountNotFound"), what="NotFound")
    waiting.until(lambda: warnings(cluster, namespace, "ServiceAccountNotFound", "early"), what="a Warning event")
    apply(cluster, namespace, SA, "later", {})
    waiting.until(lambda: reason_is(cluster, namespace, SAK, "early", "KeyGenerated"), timeout=30, what="healed")


VALID_PEM = keys.public_pem(keys.generate("ES256").public_key())
APPLY_REJECTED: dict[str, tuple[dict[str, Any], str]] = {
    "both": ({"serviceAccountName": "a", "publicKey": {"pem": VALID_PEM}, "generate": {}}, "exactly one of publicKey"),
    "neither": ({"serviceAccountName": "a"}, "exactly one of publicKey"),
    "pem-and-jwk": ({"serviceAccountName": "a", "publicKey": {"pem": VALID_PEM, "jwk": {"kty": "EC"}}}, "exactly one"),
    "private-jwk": (
        {"serviceAccountName": "a", "publicKey": {"jwk": {"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "c"}}},
        "private key members",
    ),
    "algorithm": ({"serviceAccountName": "a", "generate": {"algorithm": "HS256"}}, "Unsupported value"),
    "expiry": ({"serviceAccountName": "a", "generate": {}, "expiresAt": "tomorrow"}, "expiresAt"),
    "account-name": ({"serviceAccountName": "Not_A_Name", "generate": {}}, "serviceAccountName"),
}


@pytest.mark.parametrize("case", sorted(APPLY_REJECTED))
def test_invalid_keys_are_rejected_at_apply(cluster: Cluster, crds: None, namespace: str, case: str) -> None:
    spec, message = APPLY_REJECTED[case]
    doc = json.dumps(manifest(SAK, "bad", spec))
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=doc, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"serviceAccountName": "other"}, "serviceAccountName is immutable"),
        ({"publicKey": {"pem": keys.public_pem(keys.generate("EdDSA").public_key())}}, "immutable"),
        ({"publicKey": None, "generate": {}}, "immutable"),
    ],
)
def test_key_material_and_owner_are_immutable(
    cluster: Cluster, crds: None, namespace: str, change: dict[str, Any], message: str
) -> None:
    spec = {"serviceAccountName": "a", "publicKey": {"pem": VALID_PEM}}
    apply(cluster, namespace, SAK, "fixed", spec)
    patch = json.dumps({"spec": change})
    result = cluster.kubectl(
        "patch", "-n", namespace, "serviceaccountkeys.iam.tessera.dev/fixed", "--type=merge", "-p", patch, check=False
    )
    assert result.returncode != 0 and message in result.stderr, result.stderr


def _claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def _revocation(cluster: Cluster, namespace: str, subject: str) -> dict[str, Any] | None:
    entries = (bundle(cluster, namespace) or {}).get("revocations") or []
    return next((r for r in entries if r["sub"] == subject), None)


def test_revocation_reaches_the_bundle_at_once_and_is_pruned_after_the_last_token_expires(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    opt_in(cluster, namespace)
    subject = f"urn:tessera:serviceaccount:{namespace}:worker"
    secret = "worker-tessera-token"
    apply(cluster, namespace, SA, "worker", {"token": {"ttlSeconds": 60}})
    first = _claims(waiting.until(lambda: token_in(cluster, namespace, secret), what="a token"))

    apply(cluster, namespace, SA, "worker", {"token": {"ttlSeconds": 60}, "disabled": True})
    revoked = waiting.until(lambda: _revocation(cluster, namespace, subject), what="a revocation in the bundle")
    assert revoked["notBefore"] > first["iat"]  # the token handed out is refused from now on
    waiting.until(lambda: token_in(cluster, namespace, secret) is None, what="the token withdrawn")

    apply(cluster, namespace, SA, "worker", {"token": {"ttlSeconds": 60}, "disabled": False})
    second = _claims(waiting.until(lambda: token_in(cluster, namespace, secret), what="a fresh token"))
    assert second["iat"] >= revoked["notBefore"]  # re-enabling is not blocked by the old revocation

    cluster.kubectl("delete", "-n", namespace, "serviceaccounts.iam.tessera.dev/worker", "--wait=false")
    waiting.until(
        lambda: (_revocation(cluster, namespace, subject) or {}).get("notBefore", 0) > second["iat"],
        what="the deletion revoked the fresh token",
    )
    # Pruned once the last token (60 s) and the leeway (5 s in tests) are over, not before.
    waiting.until(lambda: _revocation(cluster, namespace, subject) is None, timeout=120, what="pruned")
    assert time.time() >= second["exp"]


def test_bundles_follow_the_opt_in_label_and_are_written_only_on_change(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    opt_in(cluster, namespace)
    first = waiting.until(lambda: bundle(cluster, namespace), what="a bundle")
    assert first["version"] == 1 and first["issuerKeys"]["keys"] and first["issuer"].startswith("https://")
    name = "tessera-trust-bundle"
    version = cluster.to_dict(cluster.core.read_namespaced_config_map(name, namespace))["metadata"]["resourceVersion"]

    apply(cluster, namespace, SA, "plain", {})  # changes nothing in the bundle
    waiting.until(lambda: reason_is(cluster, namespace, SA, "plain", "TokenIssued"), what="Ready")
    apply(cluster, namespace, SA, "fenced", {"allowedCIDRs": ["192.168.0.0/16"]})  # changes it
    subject = f"urn:tessera:serviceaccount:{namespace}:fenced"
    waiting.until(lambda: subject in (bundle(cluster, namespace) or {}).get("accounts", {}), what="CIDRs")
    # Other tests' revocations come and go in every bundle meanwhile, so the property checked is
    # "every write changed the content", and at least the CIDR change was written.
    watch = kubernetes.watch.Watch()
    written = [
        e["object"].data["bundle.json"]
        for e in watch.stream(
            cluster.core.list_namespaced_config_map,
            namespace,
            field_selector=f"metadata.name={name}",
            resource_version=version,
            timeout_seconds=3,
        )
        if e["type"] == "MODIFIED"
    ]
    assert written and json.dumps(first, sort_keys=True, separators=(",", ":")) != written[0]
    assert all(before != after for before, after in itertools.pairwise(written)), "a write changed nothing"

    opt_in(cluster, namespace, enabled=False)
    waiting.until(lambda: bundle(cluster, namespace) is None, what="the bundle removed")
