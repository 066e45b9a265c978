"""What the operator owns, damaged or deleted as people and other tools do, comes back: token Secrets,
trust bundles, the JWKS and revocations ConfigMaps (never losing a revocation), the issuer key Secret
(from the keys in memory). What cannot come back says so: a generated private key the operator never
kept, and an issuer key Secret lost while no operator held its keys.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import kubernetes
import pytest

from tessera.core import accountkeys, manifests, settings
from tests import waiting
from tests.harness import Cluster, Operator, create_namespace, start_operator, stop_operator
from tests.resources import SA, SAK, apply, bundle, bundle_kids, condition, opt_in, reason_is, token_in, warnings


def status_of(cluster: Cluster, namespace: str, plural: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = cluster.custom_object(namespace, plural, name).get("status") or {}
    return status


def claims(token: str) -> dict[str, Any]:
    found: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return found


def issued_token(cluster: Cluster, namespace: str, name: str) -> str:
    """The account's token once its status describes it (Ready, the expiry of exactly that token)."""

    def described() -> str | None:
        token = token_in(cluster, namespace, f"{name}-tessera-token")
        status = status_of(cluster, namespace, SA, name)
        if token is None or condition(cluster, namespace, SA, name).get("status") != "True":
            return None
        expires = status.get("tokenExpiresAt", "")
        return token if expires.startswith(_iso(claims(token)["exp"])) else None

    return waiting.until(described, what=f"{name}'s token, described by its status")


def new_token(cluster: Cluster, namespace: str, name: str, other_than: set[str]) -> str | None:
    token = token_in(cluster, namespace, f"{name}-tessera-token")
    return token if token is not None and token not in other_than else None


def _iso(seconds: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


# --- in a namespace of the shared cluster ---------------------------------------------------------------


def test_a_deleted_token_secret_is_written_again_and_the_status_follows(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    apply(cluster, namespace, SA, "app", {})
    first = issued_token(cluster, namespace, "app")
    cluster.core.delete_namespaced_secret("app-tessera-token", namespace)
    second = waiting.until(lambda: new_token(cluster, namespace, "app", {first}), what="a new token")
    assert claims(second)["sub"] == claims(first)["sub"]
    assert issued_token(cluster, namespace, "app") == second  # the status describes the token that exists


def test_a_token_replaced_by_hand_is_replaced_by_a_signed_one(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    apply(cluster, namespace, SA, "app", {})
    first = issued_token(cluster, namespace, "app")
    forged = base64.b64encode(b"not.a.token").decode()
    cluster.core.patch_namespaced_secret("app-tessera-token", namespace, {"data": {manifests.TOKEN_KEY: forged}})
    second = waiting.until(lambda: new_token(cluster, namespace, "app", {first, "not.a.token"}), what="signed again")
    assert claims(second)["sub"] == claims(first)["sub"] and issued_token(cluster, namespace, "app") == second


EMPTY_BUNDLE = {
    "metadata": {"name": settings.TRUST_BUNDLE_CONFIGMAP, "labels": {"app.kubernetes.io/managed-by": "tessera"}}
}


@pytest.mark.parametrize(
    "damage",
    [
        lambda c, ns: c.core.delete_namespaced_config_map(settings.TRUST_BUNDLE_CONFIGMAP, ns),
        lambda c, ns: c.core.replace_namespaced_config_map(settings.TRUST_BUNDLE_CONFIGMAP, ns, EMPTY_BUNDLE),
        lambda c, ns: c.core.patch_namespaced_config_map(
            settings.TRUST_BUNDLE_CONFIGMAP, ns, {"data": {"bundle.json": "{}", "extra.json": "{}"}}
        ),
    ],
    ids=["deleted", "emptied", "overwritten"],
)
def test_a_damaged_trust_bundle_is_restored(cluster: Cluster, operator: Operator, namespace: str, damage: Any) -> None:
    opt_in(cluster, namespace)
    apply(cluster, namespace, SA, "app", {"allowedCIDRs": ["10.1.0.0/16"]})
    subject = f"urn:tessera:serviceaccount:{namespace}:app"

    def with_the_account() -> dict[str, Any] | None:
        found = bundle(cluster, namespace)
        return found if found and subject in found.get("accounts", {}) else None

    whole = waiting.until(with_the_account, what="the bundle")
    damage(cluster, namespace)

    def unsequenced(found: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in found.items() if k != "sequence"}

    def restored_bundle() -> dict[str, Any] | None:
        keys = _quiet(lambda: cluster.configmap_data(namespace, settings.TRUST_BUNDLE_CONFIGMAP).keys(), set())
        found = bundle(cluster, namespace) if keys == {"bundle.json"} else None
        return found if found and unsequenced(found) == unsequenced(whole) else None

    restored = waiting.until(restored_bundle, what="the bundle restored, whole and alone")
    assert restored["sequence"] > whole["sequence"], "a sidecar holding the old bundle must take the restored one"


def test_a_lost_generated_private_key_is_withdrawn_and_says_so(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    """The operator never kept the private key: it cannot restore it, and it must not silently make
    another one under the same name. The key leaves every bundle and its status says why, once."""
    opt_in(cluster, namespace)
    apply(cluster, namespace, SA, "app", {})
    apply(cluster, namespace, SAK, "gen", {"serviceAccountName": "app", "generate": {}})
    waiting.until(lambda: reason_is(cluster, namespace, SAK, "gen", "KeyGenerated"), what="generated")
    kid = status_of(cluster, namespace, SAK, "gen")["keyId"]
    waiting.until(lambda: kid in bundle_kids(cluster, namespace, "serviceAccountKeys"), what="in the bundle")

    cluster.core.delete_namespaced_secret("gen-tessera-key", namespace)
    waiting.until(lambda: reason_is(cluster, namespace, SAK, "gen", accountkeys.PRIVATE_KEY_LOST), what="lost")
    ready = condition(cluster, namespace, SAK, "gen")
    assert ready["status"] == "False" and "never keeps a private key" in ready["message"]
    waiting.until(lambda: kid not in bundle_kids(cluster, namespace, "serviceAccountKeys"), what="withdrawn")
    waiting.until(lambda: warnings(cluster, namespace, accountkeys.PRIVATE_KEY_LOST, "gen"), what="a Warning")
    apply(cluster, namespace, SA, "app", {"description": "a change that makes every key of it looked at again"})
    waiting.until(lambda: condition(cluster, namespace, SA, "app").get("observedGeneration") == 2, what="seen")
    assert cluster.secret(namespace, "gen-tessera-key") is None  # nothing generated behind anyone's back
    assert len(warnings(cluster, namespace, accountkeys.PRIVATE_KEY_LOST, "gen")) == 1

    cluster.kubectl("delete", "-n", namespace, f"{SAK}.iam.tessera.dev/gen")
    apply(cluster, namespace, SAK, "gen", {"serviceAccountName": "app", "generate": {}})  # the way back
    waiting.until(lambda: reason_is(cluster, namespace, SAK, "gen", "KeyGenerated"), what="a new key")
    assert status_of(cluster, namespace, SAK, "gen")["keyId"] != kid


def test_a_generated_key_secret_holding_another_key_is_not_trusted(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    apply(cluster, namespace, SA, "app", {})
    for name in ("one", "two"):
        apply(cluster, namespace, SAK, name, {"serviceAccountName": "app", "generate": {}})
        waiting.until(lambda n=name: reason_is(cluster, namespace, SAK, n, "KeyGenerated"), what=f"{name}")  # type: ignore[misc]
    other = cluster.secret(namespace, "two-tessera-key")
    assert other is not None
    cluster.core.patch_namespaced_secret("one-tessera-key", namespace, {"data": other["data"]})
    waiting.until(lambda: reason_is(cluster, namespace, SAK, "one", accountkeys.PRIVATE_KEY_REPLACED), what="seen")
    assert status_of(cluster, namespace, SAK, "two")["keyId"] in condition(cluster, namespace, SAK, "one")["message"]


# --- the operator's own namespace, on a control plane of its own ----------------------------------------


@pytest.fixture
def running(private_cluster: Cluster, tmp_path: Path) -> Iterator[tuple[Cluster, str, list[Operator]]]:
    """A private cluster, the operator's namespace, and the operators a test starts (stopped after it)."""
    started: list[Operator] = []
    home = create_namespace(private_cluster, "tessera-system")
    yield private_cluster, home, started
    for each in started:
        stop_operator(each)


def launch(cluster: Cluster, home: str, log: Path, started: list[Operator]) -> Operator:
    operator = start_operator(cluster, home, log)
    started.append(operator)
    return operator


def revoked(cluster: Cluster, home: str) -> set[str]:
    data = cluster.configmap_data(home, settings.REVOCATIONS_CONFIGMAP).get(manifests.REVOCATIONS_KEY) or "{}"
    return {r["subject"] for r in json.loads(data).get("revocations", [])}


def jwks_kids(cluster: Cluster, home: str) -> set[str]:
    text = cluster.configmap_data(home, settings.ISSUER_JWKS_CONFIGMAP).get("jwks.json") or "{}"
    return {k["kid"] for k in json.loads(text).get("keys", [])}


def gone(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except kubernetes.client.ApiException as exc:
        if exc.status != 404:
            raise


def test_the_jwks_and_revocations_configmaps_come_back_whole(
    running: tuple[Cluster, str, list[Operator]], tmp_path: Path
) -> None:
    cluster, home, started = running
    launch(cluster, home, tmp_path / "operator.log", started)
    apps = create_namespace(cluster, "apps")
    apply(cluster, apps, SA, "gone", {})
    issued_token(cluster, apps, "gone")
    apply(cluster, apps, SA, "gone", {"disabled": True})
    subject = f"urn:tessera:serviceaccount:{apps}:gone"
    waiting.until(lambda: subject in revoked(cluster, home), what="the revocation stored")
    kids = jwks_kids(cluster, home)

    cluster.core.delete_namespaced_config_map(settings.REVOCATIONS_CONFIGMAP, home)
    waiting.until(lambda: subject in _quiet(lambda: revoked(cluster, home), set()), what="the revocations restored")
    cluster.core.patch_namespaced_config_map(settings.REVOCATIONS_CONFIGMAP, home, {"data": {"revocations.json": "{}"}})
    waiting.until(lambda: subject in _quiet(lambda: revoked(cluster, home), set()), what="restored again")
    cluster.core.delete_namespaced_config_map(settings.ISSUER_JWKS_CONFIGMAP, home)
    waiting.until(lambda: _quiet(lambda: jwks_kids(cluster, home), set()) == kids, what="the JWKS restored")


def _quiet(read: Any, otherwise: Any) -> Any:
    """``read()``, or ``otherwise`` while the object does not exist (or holds nothing readable)."""
    try:
        return read()
    except kubernetes.client.ApiException as exc:
        if exc.status != 404:
            raise
        return otherwise
    except ValueError:
        return otherwise


def test_the_issuer_key_secret_is_restored_from_the_keys_in_memory(
    running: tuple[Cluster, str, list[Operator]], tmp_path: Path
) -> None:
    cluster, home, started = running
    launch(cluster, home, tmp_path / "operator.log", started)
    before = cluster.secret(home, settings.ISSUER_KEYS_SECRET)
    assert before is not None
    cluster.core.delete_namespaced_secret(settings.ISSUER_KEYS_SECRET, home)
    after = waiting.until(lambda: cluster.secret(home, settings.ISSUER_KEYS_SECRET), what="the Secret restored")
    assert after["data"] == before["data"]  # the same keys: the same identity
    events = waiting.until(lambda: _events(cluster, home, "IssuerKeysRestored"), what="an Event saying so")
    assert "restored" in events[0]["message"] and "PRIVATE KEY" not in events[0]["message"]
    cluster.core.patch_namespaced_secret(settings.ISSUER_KEYS_SECRET, home, {"data": {"keys.json": "e30="}})  # {}
    waiting.until(
        lambda: (cluster.secret(home, settings.ISSUER_KEYS_SECRET) or {}).get("data") == before["data"],
        what="the unreadable Secret repaired",
    )


def _events(cluster: Cluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    listed = cluster.to_dict(cluster.core.list_namespaced_event(namespace))["items"]
    return [e for e in listed if e["reason"] == reason]


def test_an_issuer_key_secret_lost_while_stopped_is_not_replaced_silently(
    running: tuple[Cluster, str, list[Operator]], tmp_path: Path
) -> None:
    """Lost with no operator holding its keys: the operator signs nothing rather than mint a new identity,
    keeps publishing the old public keys, says so; a backup brings signing back."""
    cluster, home, started = running
    first = launch(cluster, home, tmp_path / "first.log", started)
    apps = create_namespace(cluster, "apps")
    opt_in(cluster, apps)
    apply(cluster, apps, SA, "before", {})
    old = issued_token(cluster, apps, "before")
    kid = jwt.get_unverified_header(old)["kid"]
    waiting.until(lambda: kid in bundle_kids(cluster, apps, "issuerKeys"), what="published")
    backup = cluster.secret(home, settings.ISSUER_KEYS_SECRET)
    assert backup is not None
    stop_operator(started.pop())
    cluster.core.delete_namespaced_secret(settings.ISSUER_KEYS_SECRET, home)
    del first

    second = launch(cluster, home, tmp_path / "second.log", started)
    apply(cluster, apps, SA, "after", {})
    waiting.until(lambda: reason_is(cluster, apps, SA, "after", "IssuerKeysMissing"), what="nothing signed")
    message = condition(cluster, apps, SA, "after")["message"]
    assert settings.ISSUER_KEYS_SECRET in message and kid in message and "Restore the Secret" in message
    assert status_of(cluster, apps, SA, "after").get("tokenExpiresAt") is None
    assert token_in(cluster, apps, "after-tessera-token") is None
    assert cluster.secret(home, settings.ISSUER_KEYS_SECRET) is None  # no new identity minted
    assert bundle_kids(cluster, apps, "issuerKeys") == {kid}  # tokens already out keep verifying
    assert token_in(cluster, apps, "before-tessera-token") == old
    assert second.metrics()["tessera_issuer_keys_missing"] == 1

    restored: Any = {
        "metadata": {"name": settings.ISSUER_KEYS_SECRET, "labels": backup["metadata"]["labels"]},
        "data": backup["data"],
    }
    cluster.core.create_namespaced_secret(home, restored)
    token = issued_token(cluster, apps, "after")
    assert jwt.get_unverified_header(token)["kid"] == kid
    waiting.until(lambda: second.metrics()["tessera_issuer_keys_missing"] == 0, what="the gauge back to 0")


def test_deleting_the_jwks_configmap_after_a_lost_key_secret_starts_a_new_identity(
    running: tuple[Cluster, str, list[Operator]], tmp_path: Path
) -> None:
    cluster, home, started = running
    launch(cluster, home, tmp_path / "first.log", started)
    old = jwks_kids(cluster, home)
    stop_operator(started.pop())
    cluster.core.delete_namespaced_secret(settings.ISSUER_KEYS_SECRET, home)
    launch(cluster, home, tmp_path / "second.log", started)
    apps = create_namespace(cluster, "apps")
    apply(cluster, apps, SA, "app", {})
    waiting.until(lambda: reason_is(cluster, apps, SA, "app", "IssuerKeysMissing"), what="nothing signed")
    cluster.core.delete_namespaced_config_map(settings.ISSUER_JWKS_CONFIGMAP, home)  # the documented decision
    token = issued_token(cluster, apps, "app")
    new = jwt.get_unverified_header(token)["kid"]
    assert new not in old and jwks_kids(cluster, home) == {new}


def test_revocations_lost_while_stopped_are_recovered_from_the_trust_bundles(
    running: tuple[Cluster, str, list[Operator]], tmp_path: Path
) -> None:
    cluster, home, started = running
    launch(cluster, home, tmp_path / "first.log", started)
    apps = create_namespace(cluster, "apps")
    opt_in(cluster, apps)
    apply(cluster, apps, SA, "gone", {})
    issued_token(cluster, apps, "gone")
    apply(cluster, apps, SA, "gone", {"disabled": True})
    subject = f"urn:tessera:serviceaccount:{apps}:gone"
    waiting.until(
        lambda: any(r["sub"] == subject for r in (bundle(cluster, apps) or {}).get("revocations", [])),
        what="the revocation in the bundle",
    )
    stop_operator(started.pop())
    gone(cluster.core.delete_namespaced_config_map, settings.REVOCATIONS_CONFIGMAP, home)
    launch(cluster, home, tmp_path / "second.log", started)
    assert subject in revoked(cluster, home)  # stored again before the operator was ready
    assert any(r["sub"] == subject for r in (bundle(cluster, apps) or {}).get("revocations", []))
