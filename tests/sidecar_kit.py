"""Keys, trust bundles and tokens for sidecar tests, including the malformed and malicious ones.

Tokens are built by hand (header and payload as raw JSON text, signed with ``cryptography``) so a
test can produce anything an attacker could: duplicate members, wrong types, other algorithms.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from tessera.crypto import keys

ISSUER = "https://tessera.tessera-system.svc"
NAMESPACE = "shop"
AUDIENCE = "orders"
NOW = 1_800_000_000
BILLING = "urn:tessera:serviceaccount:shop:billing"
REPORTS = "urn:tessera:serviceaccount:shop:reports"
LAPTOP = "urn:tessera:serviceaccount:shop:laptop"
RULES = {
    "rules": [
        {"path": "/healthz", "allow": "anyone"},
        {"methods": ["GET", "HEAD"], "path": "/orders/**", "permission": "shop.orders.read"},
        {"methods": ["POST"], "path": "/orders/*/cancel", "permission": "shop.orders.write"},
        {"path": "/admin/**", "permission": "shop.admin.all"},
        {"path": "/me", "allow": "authenticated"},
    ]
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign_raw(key: keys.PrivateKey, signing_input: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = utils.decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(signing_input)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())


def compact(header: str | dict[str, Any], payload: str | dict[str, Any], key: keys.PrivateKey | None) -> str:
    """A JWS from raw header/payload JSON (text is used as is), signed with ``key`` (None: empty signature)."""
    head = header if isinstance(header, str) else json.dumps(header)
    body = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = f"{b64(head.encode())}.{b64(body.encode())}"
    signature = b"" if key is None else sign_raw(key, signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


@dataclasses.dataclass
class Kit:
    """An issuer key, a second issuer's key, and a ServiceAccountKey, with the bundle that trusts them."""

    issuer_key: keys.PrivateKey
    issuer_kid: str
    other_issuer_key: keys.PrivateKey  # trusted by nobody
    other_kid: str
    account_key: keys.PrivateKey  # the laptop key of shop/laptop
    account_kid: str
    revoked: dict[str, int] = dataclasses.field(default_factory=dict)
    cidrs: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    grants: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    account_key_exp: int | None = None
    publish_account_key: bool = True  # False: the bundle no longer carries it (a disabled or deleted account)
    now: int = NOW  # the moment tokens are made for (the real clock for a sidecar process)

    @classmethod
    def make(cls, algorithm: keys.Algorithm = "ES256", now: int = NOW) -> Kit:
        issuer_key, other, account = keys.generate(algorithm), keys.generate(algorithm), keys.generate("EdDSA")
        return cls(
            issuer_key,
            keys.thumbprint(issuer_key.public_key()),
            other,
            keys.thumbprint(other.public_key()),
            account,
            keys.thumbprint(account.public_key()),
            grants={
                BILLING: ["shop.orders.read", "shop.*.list"],
                LAPTOP: ["shop.orders.*"],
                REPORTS: ["shop.reports.read"],
            },
            now=now,
        )

    def bundle(self) -> dict[str, Any]:
        account_jwk = {**keys.public_jwk(self.account_key.public_key(), self.account_kid), "sub": LAPTOP}
        if self.account_key_exp is not None:
            account_jwk["exp"] = self.account_key_exp
        return {
            "version": 1,
            "issuer": ISSUER,
            "issuerKeys": {"keys": [keys.public_jwk(self.issuer_key.public_key(), self.issuer_kid)]},
            "serviceAccountKeys": {"keys": [account_jwk] if self.publish_account_key else []},
            "revocations": [{"sub": s, "notBefore": nb} for s, nb in sorted(self.revoked.items())],
            "accounts": {s: {"cidrs": c} for s, c in sorted(self.cidrs.items())},
            "grants": {p: {"permissions": perms, "services": []} for p, perms in sorted(self.grants.items())},
        }

    def bundle_text(self) -> str:
        return json.dumps(self.bundle(), sort_keys=True, separators=(",", ":"))

    def claims(self, sub: str | None = BILLING, **changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "iss": ISSUER,
            "sub": sub,
            "aud": AUDIENCE,
            "iat": self.now - 10,
            "nbf": self.now - 10,
            "exp": self.now + 890,
            "jti": "j-1",
            "client_id": sub,
        }
        body.update(changes)
        return {k: v for k, v in body.items() if v is not None}

    def issued(self, sub: str | None = BILLING, **changes: Any) -> str:
        """A token as the operator issues it."""
        header = {"alg": keys.algorithm_for(self.issuer_key.public_key()), "kid": self.issuer_kid, "typ": "at+jwt"}
        return compact(header, self.claims(sub, **changes), self.issuer_key)

    def self_signed(self, **changes: Any) -> str:
        """A token the laptop key signs for its own account (iss = sub)."""
        header = {"alg": "EdDSA", "kid": self.account_kid, "typ": "JWT"}
        fields: dict[str, Any] = {"iss": LAPTOP, "nbf": None, "jti": None, "client_id": None, **changes}
        body = self.claims(fields.pop("sub", LAPTOP), **fields)
        return compact(header, body, self.account_key)


def write_bundle_dir(folder: Path, text: str) -> None:
    """Lay out ``folder`` the way kubelet mounts a ConfigMap: a timestamped data folder, a ``..data``
    symlink to it, and ``bundle.json`` -> ``..data/bundle.json``; replacing swaps the symlink atomically."""
    write_mounted(folder, "bundle.json", text)


def write_mounted(folder: Path, name: str, text: str) -> None:
    """One file of a kubelet-mounted ConfigMap or Secret (see :func:`write_bundle_dir`)."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = f"..{os.getpid()}_{len(list(folder.glob('..20*')))}"
    data = folder / f"..20{stamp}"
    data.mkdir()
    (data / name).write_text(text)
    tmp = folder / "..data_tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(data.name)
    os.replace(tmp, folder / "..data")
    link = folder / name
    if not link.is_symlink():
        link.symlink_to(f"..data/{name}")
