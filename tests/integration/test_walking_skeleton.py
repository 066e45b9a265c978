"""End to end as a user does it: kubectl apply the CRDs and the example, wait for Ready, and verify
the mounted token against the issuer's published JWKS; plus apply-time rejection, owner
references and garbage collection, disabling, and the issuer key race.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import time
from typing import Any

import jwt
import kubernetes
import pytest

from tessera.api import meta
from tessera.core import issuer, settings
from tessera.kube import client as kube_client
from tessera.kube import issuerkeys
from tests import waiting
from tests.harness import EXAMPLES, Cluster, Operator, create_namespace
from tests.resources import bundle_kids, leaks_private_key

GROUP, VERSION, PLURAL = meta.GROUP, meta.VERSION, "serviceaccounts"


def jwks_of(cluster: Cluster, operator: Operator) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        cluster.configmap_data(operator.namespace, settings.ISSUER_JWKS_CONFIGMAP)["jwks.json"]
    )
    return document


def token_in(cluster: Cluster, namespace: str, secret: str) -> str | None:
    """The token in a Secret; None when the Secret or its token is absent."""
    data = (cluster.secret(namespace, secret) or {}).get("data") or {}
    return base64.b64decode(data["token"]).decode() if "token" in data else None


def ready_condition(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    obj = cluster.custom_object(namespace, PLURAL, name)
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), None)


def apply_sa(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any]) -> None:
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServiceAccount", "metadata": {"name": name}, "spec": spec}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))


def test_example_serviceaccount_gets_a_verifiable_token(cluster: Cluster, operator: Operator) -> None:
    started = time.monotonic()
    cluster.kubectl("apply", "-f", str(EXAMPLES))  # as the README says
    try:
        cluster.kubectl(
            "wait", "--for=condition=Ready", "--timeout=60s", "-n", "shop", "serviceaccounts.iam.tessera.dev/billing"
        )
        print(f"apply -> Ready: {time.monotonic() - started:.2f}s")
        status = cluster.custom_object("shop", PLURAL, "billing")["status"]
        assert status["subject"] == "urn:tessera:serviceaccount:shop:billing"
        token = token_in(cluster, "shop", status["secretName"])
        assert token is not None
        jwks = jwks_of(cluster, operator)
        header = jwt.get_unverified_header(token)
        assert header["typ"] == "at+jwt" and header["kid"] == status["keyId"]
        key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
        claims = jwt.decode(
            token,
            key,
            algorithms=[key.algorithm_name],
            audience="ledger",
            issuer=jwks["issuer"],
            options={"require": ["exp", "iat", "sub", "aud", "iss", "jti"]},
        )
        assert claims["sub"] == status["subject"] and set(claims["aud"]) == {"ledger", "payments"}
        assert claims["exp"] - claims["iat"] == 900 and claims["cidrs"] == ["10.0.0.0/8"]
        expires = datetime.datetime.fromisoformat(status["tokenExpiresAt"])
        assert int(expires.timestamp()) == claims["exp"]
        for sak in ("billing-generated", "billing-laptop"):
            cluster.kubectl(
                "wait",
                "--for=condition=Ready",
                "--timeout=60s",
                "-n",
                "shop",
                f"serviceaccountkeys.iam.tessera.dev/{sak}",
            )
        laptop = cluster.custom_object("shop", "serviceaccountkeys", "billing-laptop")["status"]["keyId"]
        waiting.until(lambda: laptop in bundle_kids(cluster, "shop", "serviceAccountKeys"), what="the trust bundle")
        listed = cluster.kubectl("get", "tessera", "-n", "shop").stdout
        assert "billing" in listed and "billing-laptop" in listed and "False" not in listed
    finally:
        cluster.kubectl("delete", "-f", str(EXAMPLES / "00-namespace.yaml"), "--wait=false")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"allowedCIDRs": ["10.0.0.300/8"]}, "must be a CIDR range"),
        ({"token": {"ttlSeconds": 5}}, "should be greater than or equal to 60"),
        ({"token": {"ttlSeconds": 100000}}, "should be less than or equal to 86400"),
        ({"token": {"audiences": [""]}}, "should be at least 1 chars long"),
        ({"disabled": "yes"}, "spec.disabled: Invalid value"),
    ],
)
def test_invalid_specs_are_rejected_at_apply(
    cluster: Cluster, crds: None, namespace: str, spec: dict[str, Any], message: str
) -> None:
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ServiceAccount", "metadata": {"name": "bad"}, "spec": spec}
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest), check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_token_secret_is_owned_and_collected_with_its_account(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    apply_sa(cluster, namespace, "worker", {})
    waiting.until(lambda: (ready_condition(cluster, namespace, "worker") or {}).get("status") == "True", what="Ready")
    secret = cluster.secret(namespace, "worker-tessera-token")
    assert secret is not None
    sa = cluster.custom_object(namespace, PLURAL, "worker")
    [owner] = secret["metadata"]["ownerReferences"]
    assert owner["uid"] == sa["metadata"]["uid"] and owner["controller"]
    assert secret["metadata"]["labels"][meta.MANAGED_BY_LABEL] == "tessera"
    # A KUBEBUILDER_ASSETS folder may hold no kube-controller-manager: then the owner reference is the proof.
    if cluster.garbage_collected:
        cluster.kubectl("delete", "-n", namespace, "serviceaccounts.iam.tessera.dev/worker")
        waiting.until(lambda: cluster.secret(namespace, "worker-tessera-token") is None, timeout=60, what="GC")


def test_disabling_withdraws_the_token_and_enabling_restores_it(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    apply_sa(cluster, namespace, "batch", {})
    waiting.until(lambda: token_in(cluster, namespace, "batch-tessera-token"), what="a token")
    apply_sa(cluster, namespace, "batch", {"disabled": True})
    waiting.until(
        lambda: (ready_condition(cluster, namespace, "batch") or {}).get("reason") == "Disabled", what="Disabled"
    )
    assert token_in(cluster, namespace, "batch-tessera-token") is None
    apply_sa(cluster, namespace, "batch", {"disabled": False})
    token = waiting.until(lambda: token_in(cluster, namespace, "batch-tessera-token"), what="a new token")
    assert jwt.decode(token, options={"verify_signature": False})["sub"].endswith(f":{namespace}:batch")


def test_racing_replicas_create_exactly_one_issuer_key_set(cluster: Cluster, crds: None) -> None:
    namespace = create_namespace(cluster, "race")
    try:
        cfg = settings.Settings(namespace=namespace)
        kube = kube_client.Clients(api=cluster.api, core=cluster.core, custom=cluster.custom)
        now = datetime.datetime.now(datetime.UTC)

        async def race() -> list[list[str]]:
            # four replicas, each with a key set of its own, as the keeper creates the Secret
            candidates = [issuer.initial(cfg.algorithm, now) for _ in range(4)]
            results = await asyncio.gather(*(issuerkeys.create(kube, cfg, keyset) for keyset in candidates))
            return [[k.kid for k in stored.keyset or ()] for stored in results]

        kid_sets = asyncio.run(race())
        assert len({tuple(kids) for kids in kid_sets}) == 1 and all(kid_sets), kid_sets
        assert (
            len(cluster.core.list_namespaced_secret(namespace, label_selector=f"{meta.MANAGED_BY_LABEL}=tessera").items)
            == 1
        )
    finally:
        cluster.core.delete_namespace(namespace)


def test_operator_logs_carry_no_token_or_key(cluster: Cluster, operator: Operator, namespace: str) -> None:
    apply_sa(cluster, namespace, "quiet", {})
    token = waiting.until(lambda: token_in(cluster, namespace, "quiet-tessera-token"), what="a token")
    keys_secret = cluster.secret(operator.namespace, settings.ISSUER_KEYS_SECRET)
    assert keys_secret is not None
    stored = json.loads(base64.b64decode(keys_secret["data"]["keys.json"]))
    logs = operator.logs()
    assert token not in logs and token.split(".")[2] not in logs
    for entry in stored["keys"]:
        leaked = leaks_private_key(entry["privateKeyPem"], logs)  # (not in the assert: pytest would print the key)
        assert not leaked, "the issuer's private key is in the operator log"
    assert "PRIVATE KEY" not in logs


def test_token_is_written_once_and_not_rewritten_by_timer_ticks(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    # The operator under test checks every 2 s (TESSERA_REFRESH_CHECK_SECONDS): watch the Secret
    # from before the account exists through three ticks; one write, no rewrites.
    listed = cluster.core.list_namespaced_secret(namespace)
    events = kubernetes.watch.Watch().stream(
        cluster.core.list_namespaced_secret,
        namespace,
        field_selector="metadata.name=steady-tessera-token",
        resource_version=cluster.to_dict(listed)["metadata"]["resourceVersion"],
        timeout_seconds=8,
    )
    apply_sa(cluster, namespace, "steady", {})
    seen = [(event["type"], event["object"].metadata.resource_version) for event in events]
    assert [kind for kind, _ in seen] == ["ADDED"], seen
    assert (ready_condition(cluster, namespace, "steady") or {}).get("status") == "True"


def test_short_lived_token_is_refreshed_before_it_expires(cluster: Cluster, operator: Operator, namespace: str) -> None:
    # The shortest TTL allowed (60 s) is shorter than twice the delivery margin (90 s + one check), so
    # it is refreshed at half its life less the spread: 24 to 30 s after issue.
    apply_sa(cluster, namespace, "brief", {"token": {"ttlSeconds": 60}})
    first = waiting.until(lambda: token_in(cluster, namespace, "brief-tessera-token"), what="a first token")
    claims = jwt.decode(first, options={"verify_signature": False})

    def refreshed_token() -> str | None:
        current = token_in(cluster, namespace, "brief-tessera-token")
        return current if current != first else None

    second = waiting.until(refreshed_token, timeout=75, what="a refreshed token")
    refreshed = jwt.decode(second, options={"verify_signature": False})
    assert claims["iat"] + 24 <= refreshed["iat"] <= claims["iat"] + 33, (claims, refreshed)  # + a check's delay

    def status_expiry() -> int:  # the status is patched just after the Secret is written
        status = cluster.custom_object(namespace, PLURAL, "brief")["status"]
        return int(datetime.datetime.fromisoformat(status["tokenExpiresAt"]).timestamp())

    waiting.until(lambda: status_expiry() == refreshed["exp"], what="the status to show the new expiry")


def test_a_foreign_secret_with_the_token_name_is_never_overwritten(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    foreign = kubernetes.client.V1Secret(
        metadata=kubernetes.client.V1ObjectMeta(name="taken-tessera-token"), string_data={"password": "keep-me"}
    )
    cluster.core.create_namespaced_secret(namespace, foreign)
    apply_sa(cluster, namespace, "taken", {})
    condition = waiting.until(
        lambda: (c := ready_condition(cluster, namespace, "taken")) and c["reason"] == "SecretNameTaken" and c,
        what="Ready=False SecretNameTaken",
    )
    assert condition["status"] == "False" and "not managed by Tessera" in condition["message"]
    secret = cluster.secret(namespace, "taken-tessera-token")
    assert secret is not None and set(secret["data"]) == {"password"}
    warnings = waiting.until(lambda: _warnings(cluster, namespace, "SecretNameTaken"), what="a Warning event")
    assert len(warnings) == 1 and (warnings[0].get("count") or 1) == 1, warnings  # once, not once per timer tick


def _warnings(cluster: Cluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    events = cluster.to_dict(cluster.core.list_namespaced_event(namespace))["items"]
    return [e for e in events if e["type"] == "Warning" and e["reason"] == reason]
