"""Helpers for tests that drive Tessera's resources the way users do (kubectl apply) and read back
what the operator made: conditions, Warning events, tokens, trust bundles."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import jwt
import kubernetes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

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


def leaks_private_key(pem: str, text: str) -> bool:
    """Whether ``text`` (a log) carries this private key in any form: PEM lines (as they are or escaped
    in a repr), its secret numbers in hex or base64url (a JWK's ``d``)."""
    flat = "".join(text.replace("\\n", "\n").split())
    return any(form in flat for form in private_key_material(pem))


def private_key_material(pem: str) -> list[str]:
    """The secret numbers of a private key (hex, base64url) and the runs of its PEM body that encode
    only them, cut at the PEM's line ends (a log may quote the lines one by one). The PEM's first
    characters are no evidence: the first 48 of every P-256 PKCS#8 key are the same."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        secrets = [key.private_bytes_raw()]
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        secrets = [key.private_numbers().private_value.to_bytes((key.curve.key_size + 7) // 8, "big")]
    elif isinstance(key, rsa.RSAPrivateKey):
        numbers = key.private_numbers()
        secrets = [n.to_bytes((n.bit_length() + 7) // 8, "big") for n in (numbers.d, numbers.p, numbers.q)]
    else:
        raise TypeError(f"no secret numbers known for {type(key).__name__}")
    lines = pem.strip().splitlines()[1:-1]
    body, width = "".join(lines), len(lines[0])
    der = base64.b64decode(body)
    forms: list[str] = []
    for raw in secrets:
        start = der.index(raw)
        first, end = -(-start // 3) * 4, (start + len(raw)) // 3 * 4  # base64 groups of secret bytes only
        forms += [raw.hex(), base64.urlsafe_b64encode(raw).rstrip(b"=").decode()]
        cuts = [first, *range((first // width + 1) * width, end, width), end]
        forms += [body[a:b] for a, b in itertools.pairwise(cuts) if b - a >= 16]  # 96 random bits or more
    return forms
