"""Token verification: who is calling, decided from the token and the trust bundle alone.

:meth:`Verifier.authenticate` checks, first failure wins, each with a short machine-readable reason:
size, shape, strict base64url, header JSON (no duplicate members), ``alg`` on the allow-list (never
``none`` or HMAC), no ``crit``, a known ``kid``, ``alg`` equal to the one algorithm that key's type
signs with (no key confusion), the signature, then the claims: types, ``iss`` (the operator, or for
a ServiceAccountKey the account itself with ``sub = iss``), ``typ``, ``aud``, ``exp``/``nbf``/``iat``
within the leeway, the maximum lifetime, and the revocations. The payload is parsed only after the
signature checked out.

Permissions come from the bundle's grants for the namespace, for every kind of token: the bundle is
newer than any token, so a removed grant stops working at once. (The ``grants`` claim of operator
tokens serves consumers that only read the JWT.)

Verified identities are cached, keyed by a digest of the token (the token itself is never kept),
until they expire; a new bundle starts a new Verifier with an empty cache, which is how new
revocations and removed keys take effect at once. Not thread-safe: one event loop owns it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from tessera.sidecar import trust

ISSUED_TYP = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068; case-insensitive per RFC 7515
SELF_SIGNED_TYP = frozenset({"jwt", "at+jwt", "application/at+jwt"})
B64URL = re.compile(r"[A-Za-z0-9_-]*")
CACHE_LIMIT = 10_000
_SHA256 = hashes.SHA256()
_ECDSA = ec.ECDSA(_SHA256)
_PKCS1 = padding.PKCS1v15()


@dataclasses.dataclass(frozen=True)
class Policy:
    audiences: frozenset[str]
    namespace: str
    leeway: int = 60
    max_token_bytes: int = 8192
    max_lifetime: int = 86400  # exp - iat, seconds
    algorithms: frozenset[str] = frozenset({"ES256", "EdDSA", "RS256"})


@dataclasses.dataclass(frozen=True)
class Identity:
    subject: str
    issuer: str
    self_signed: bool
    expires_at: float
    permissions: frozenset[str]  # granted in this namespace (wildcard segments as written)
    # Source ranges: the caller must be inside at least one range of every set (the account's ranges
    # from the bundle, and the token's cidrs claim); no sets = from anywhere.
    cidrs: tuple[tuple[trust.Network, ...], ...]


@dataclasses.dataclass(frozen=True)
class Failure:
    reason: str


class _Reject(Exception):  # internal control flow: never escapes this module
    def __init__(self, reason: str) -> None:
        self.reason = reason


_ALPHABET = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}


def _b64(part: str) -> bytes:
    """Strict, canonical base64url without padding: the unused low bits of the last character are zero,
    so each byte string has exactly one encoding (no second spelling of the same signature)."""
    if len(part) % 4 == 1 or not B64URL.fullmatch(part):
        raise _Reject("malformed_token")
    spare = {2: 16, 3: 4}.get(len(part) % 4)
    if spare is not None and _ALPHABET[part[-1]] % spare:
        raise _Reject("malformed_token")
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _Reject("malformed_token") from exc


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _Reject("duplicate_member")
    return found


def _json(data: bytes, reason: str) -> dict[str, Any]:
    try:
        value = json.loads(data, object_pairs_hook=_unique)
    except _Reject:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _Reject(reason) from exc
    if not isinstance(value, dict):
        raise _Reject(reason)
    return value


def _check_signature(key: trust.Key, signing_input: bytes, signature: bytes) -> None:
    if len(signature) != key.signature_bytes:
        raise _Reject("bad_signature")
    public = key.public
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            der = utils.encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            public.verify(der, signing_input, _ECDSA)
        elif isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, signing_input)
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, signing_input, _PKCS1, _SHA256)
        else:  # pragma: no cover (trust.parse admits no other key type)
            raise _Reject("unknown_kid")
    except InvalidSignature as exc:
        raise _Reject("bad_signature") from exc


def _number(claims: dict[str, Any], name: str, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise _Reject(f"missing_{name}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        raise _Reject("invalid_claims")
    return float(value)


def _audiences(claims: dict[str, Any]) -> Iterable[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        return aud
    raise _Reject("missing_aud" if aud is None else "invalid_claims")


def _string(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        raise _Reject(f"missing_{name}")
    if not isinstance(value, str) or not value:
        raise _Reject("invalid_claims")
    return value


def _cidrs_claim(claims: dict[str, Any]) -> tuple[trust.Network, ...]:
    value = claims.get("cidrs")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise _Reject("invalid_claims")
    try:
        return tuple(ipaddress.ip_network(c, strict=False) for c in value)
    except ValueError as exc:
        raise _Reject("invalid_claims") from exc


class Verifier:
    """Authenticates bearer tokens against one bundle (see the module docstring)."""

    def __init__(self, bundle: trust.Bundle, policy: Policy, cache_limit: int = CACHE_LIMIT) -> None:
        self.bundle = bundle
        self.policy = policy
        self._cache: dict[bytes, Identity] = {}
        self._cache_limit = cache_limit
        self.hits = 0
        self.misses = 0

    def authenticate(self, token: str, now: float) -> Identity | Failure:
        digest = hashlib.blake2b(token.encode("ascii", "replace"), digest_size=16).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            if now <= cached.expires_at + self.policy.leeway:
                self.hits += 1
                return cached
            del self._cache[digest]
        self.misses += 1
        try:
            identity = self._verify(token, now)
        except _Reject as rejected:
            return Failure(rejected.reason)
        if len(self._cache) >= self._cache_limit:
            self._evict(now)
        self._cache[digest] = identity
        return identity

    def _evict(self, now: float) -> None:
        """Drop expired entries; if none were, the oldest half (insertion order)."""
        leeway = self.policy.leeway
        expired = [d for d, i in self._cache.items() if now > i.expires_at + leeway]
        for digest in expired or list(self._cache)[: self._cache_limit // 2]:
            del self._cache[digest]

    def _verify(self, token: str, now: float) -> Identity:
        policy, bundle = self.policy, self.bundle
        if len(token) > policy.max_token_bytes:
            raise _Reject("token_too_large")
        if not token.isascii():
            raise _Reject("malformed_token")
        parts = token.split(".")
        if len(parts) != 3:
            raise _Reject("malformed_token")
        header = _json(_b64(parts[0]), "malformed_header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in policy.algorithms:
            raise _Reject("alg_not_allowed")
        if "crit" in header:
            raise _Reject("unsupported_crit")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise _Reject("missing_kid")
        key = bundle.keys.get(kid)
        if key is None:
            raise _Reject("unknown_kid")
        if alg != key.algorithm:
            raise _Reject("alg_key_mismatch")
        _check_signature(key, f"{parts[0]}.{parts[1]}".encode("ascii"), _b64(parts[2]))
        claims = _json(_b64(parts[1]), "malformed_payload")
        return self._claims(header, claims, key, now)

    def _claims(self, header: dict[str, Any], claims: dict[str, Any], key: trust.Key, now: float) -> Identity:
        policy, bundle = self.policy, self.bundle
        iss, sub = _string(claims, "iss"), _string(claims, "sub")
        exp = _number(claims, "exp", True)
        iat = _number(claims, "iat", True)
        nbf = _number(claims, "nbf", False)
        assert exp is not None and iat is not None
        typ = header.get("typ")
        if typ is not None and not isinstance(typ, str):
            raise _Reject("wrong_typ")
        self_signed = key.subject is not None
        if self_signed:
            if iss != key.subject or sub != key.subject:
                raise _Reject("wrong_issuer")
            if typ is not None and typ.lower() not in SELF_SIGNED_TYP:
                raise _Reject("wrong_typ")
            if key.expires_at is not None and now >= key.expires_at:
                raise _Reject("key_expired")
        else:
            if iss != bundle.issuer:
                raise _Reject("wrong_issuer")
            if typ is None or typ.lower() not in ISSUED_TYP:
                raise _Reject("wrong_typ")
        if not any(a in policy.audiences for a in _audiences(claims)):
            raise _Reject("wrong_audience")
        if now > exp + policy.leeway:
            raise _Reject("expired")
        if nbf is not None and now + policy.leeway < nbf:
            raise _Reject("not_yet_valid")
        if iat > now + policy.leeway:
            raise _Reject("issued_in_future")
        if exp - iat > policy.max_lifetime or exp < iat:
            raise _Reject("lifetime_too_long")
        not_before = bundle.revocations.get(sub)
        if not_before is not None and iat < not_before:
            raise _Reject("revoked")
        token_cidrs = () if self_signed else _cidrs_claim(claims)
        ranges = tuple(r for r in (bundle.cidrs.get(sub, ()), token_cidrs) if r)
        return Identity(
            subject=sub,
            issuer=iss,
            self_signed=self_signed,
            expires_at=exp,
            permissions=bundle.grants.get(sub, frozenset()),
            cidrs=ranges,
        )


def permitted(granted: frozenset[str], needed: str) -> bool:
    """Whether any granted permission covers ``needed``: equal segment counts, ``*`` matches one segment."""
    if needed in granted:
        return True
    wanted = needed.split(".")
    for pattern in granted:
        if "*" not in pattern:
            continue
        segments = pattern.split(".")
        if len(segments) == len(wanted) and all(p in ("*", w) for p, w in zip(segments, wanted, strict=True)):
            return True
    return False


def source_allowed(identity: Identity, address: str | None) -> bool:
    """Whether the caller's address is inside every set of the identity's ranges (any address when it has none)."""
    if not identity.cidrs:
        return True
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return all(any(ip in network for network in ranges) for ranges in identity.cidrs)
