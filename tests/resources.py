"""Helpers for tests that drive Tessera's resources the way users do (kubectl apply) and read back
what the operator made: conditions, Warning events, tokens, trust bundles."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import kubernetes

from tessera.api import meta
from tessera.core import settings
from tests.harness import Cluster

SA, SAK = "serviceaccounts", "serviceaccountkeys"
KINDS = {SA: "ServiceAccount", SAK: "ServiceAccountKey"}


def manifest(plural: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": meta.API_VERSION, "kind": KINDS[plural], "metadata": {"name": name}, "spec": spec}


def apply(cluster: Cluster, namespace: str, plural: str, name: str, spec: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest(plural, name, spec)))


def condition(cluster: Cluster, namespace: str, plural: str, name: str) -> dict[str, Any]:
    """The Ready condition ({} until there is one)."""
    obj = cluster.custom_object(namespace, plural, name)
    found = [c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"]
    return found[0] if found else {}


def reason_is(cluster: Cluster, namespace: str, plural: str, name: str, reason: str) -> bool:
    return condition(cluster, namespace, plural, name).get("reason") == reason


def warnings(cluster: Cluster, namespace: str, reason: str, name: str | None = None) -> list[dict[str, Any]]:
    events = cluster.to_dict(cluster.core.list_namespaced_event(namespace))["items"]
    return [
        e
        for e in events
        if e["type"] == "Warning" and e["reason"] == reason and name in (None, e["involvedObject"]["name"])
    ]


def token_in(cluster: Cluster, namespace: str, secret: str) -> str | None:
    data = (cluster.secret(namespace, secret) or {}).get("data") or {}
    return base64.b64decode(data["token"]).decode() if "token" in data else None


def opt_in(cluster: Cluster, namespace: str, enabled: bool = True) -> None:
    value = settings.TRUST_BUNDLE_LABEL_VALUE if enabled else None
    cluster.core.patch_namespace(namespace, {"metadata": {"labels": {settings.TRUST_BUNDLE_LABEL: value}}})


def bundle(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    """The parsed trust bundle of a namespace, or None when it has none."""
    try:
        found = cluster.core.read_namespaced_config_map(settings.TRUST_BUNDLE_CONFIGMAP, namespace)
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    document: dict[str, Any] = json.loads((found.data or {})["bundle.json"])
    return document


def bundle_kids(cluster: Cluster, namespace: str, section: str) -> set[str]:
    return {k["kid"] for k in ((bundle(cluster, namespace) or {}).get(section) or {}).get("keys", [])}


def verify_self_signed(token: str, document: dict[str, Any], audience: str) -> dict[str, Any]:
    """Verify a workload-signed JWT as a verifier holding the bundle would: kid -> key, iss = sub = its owner."""
    header = jwt.get_unverified_header(token)
    [jwk] = [k for k in document["serviceAccountKeys"]["keys"] if k["kid"] == header["kid"]]
    key = jwt.PyJWK.from_dict({k: v for k, v in jwk.items() if k not in ("sub", "exp")})
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=[jwk["alg"]], audience=audience, issuer=jwk["sub"], options={"require": ["exp", "iat"]}
    )
    assert claims["sub"] == jwk["sub"]
    return claims
