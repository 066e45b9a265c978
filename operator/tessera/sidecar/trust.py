"""The trust bundle as the sidecar uses it: keys by kid, revocations, account source ranges, grants.

:func:`parse` turns the operator's ``bundle.json`` into an immutable :class:`Bundle` or raises
:class:`BundleError` with a message that names what is wrong (never key material). Every key is
tied to the one algorithm its type signs with, so a token can never choose how it is checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, utils

from tessera import errors
from tessera.crypto import keys

SUPPORTED_VERSIONS = (1,)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class BundleError(errors.TesseraError):
    """The trust bundle is unreadable or inconsistent; the last good one stays in use."""


@dataclasses.dataclass(frozen=True)
class Key:
    kid: str
    algorithm: keys.Algorithm  # the only algorithm this key verifies
    public: keys.PublicKey
    subject: str | None  # account keys: the one subject (= issuer) it signs for; None for issuer keys
    expires_at: int | None  # account keys: not trusted from this moment (seconds since the epoch)
    signature_bytes: int  # the length of a raw signature by this key
    # (signature, signing input) -> None, or cryptography's InvalidSignature; bound once per key so
    # checking a token costs no type dispatch
    check: Callable[[bytes, bytes], None] = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class Bundle:
    issuer: str
    keys: Mapping[str, Key]
    revocations: Mapping[str, int]  # subject -> notBefore: tokens issued before it are refused
    cidrs: Mapping[str, tuple[Network, ...]]  # subject -> the only source ranges it may call from
    grants: Mapping[str, frozenset[str]]  # principal -> permissions in this namespace
    services: Mapping[str, tuple[str, ...]]  # principal -> services it is bound for here
    digest: str  # of the bundle text: equal digests, equal bundles


_SHA256 = hashes.SHA256()
_ECDSA = ec.ECDSA(_SHA256)
_PKCS1 = padding.PKCS1v15()


def _checker(public: keys.PublicKey) -> Callable[[bytes, bytes], None]:
    if isinstance(public, ec.EllipticCurvePublicKey):
        verify_ec, encode = public.verify, utils.encode_dss_signature

        def check_ec(signature: bytes, data: bytes) -> None:
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            verify_ec(encode(r, s), data, _ECDSA)

        return check_ec
    if isinstance(public, ed25519.Ed25519PublicKey):
        return public.verify
    verify_rsa = public.verify

    def check_rsa(signature: bytes, data: bytes) -> None:
        verify_rsa(signature, data, _PKCS1, _SHA256)

    return check_rsa


def _signature_bytes(key: keys.PublicKey) -> int:
    algorithm = keys.algorithm_for(key)
    if algorithm in ("ES256", "EdDSA"):
        return 64
    return (key.key_size + 7) // 8  # type: ignore[union-attr]


def _key(jwk: Any, subject: str | None, where: str) -> Key:
    if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
        raise BundleError(f"{where}: every key needs a string kid")
    kid = jwk["kid"]
    try:
        public = keys.load_jwk({k: v for k, v in jwk.items() if k not in ("sub", "exp")})
    except errors.KeyMaterialError as exc:
        raise BundleError(f"{where}: key {kid}: {exc}") from exc
    algorithm = keys.algorithm_for(public)
    if jwk.get("alg", algorithm) != algorithm:
        raise BundleError(f"{where}: key {kid} says alg {jwk.get('alg')!r} but its type signs {algorithm}")
    expires = jwk.get("exp")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int)):
        raise BundleError(f"{where}: key {kid} has a non-integer exp")
    return Key(kid, algorithm, public, subject, expires, _signature_bytes(public), _checker(public))


def _keys(doc: Mapping[str, Any]) -> dict[str, Key]:
    found: list[Key] = []
    for jwk in _list(doc, "issuerKeys", "keys"):
        found.append(_key(jwk, None, "issuerKeys"))
    for jwk in _list(doc, "serviceAccountKeys", "keys"):
        sub = jwk.get("sub") if isinstance(jwk, dict) else None
        if not isinstance(sub, str) or not sub:
            raise BundleError("serviceAccountKeys: every key needs its sub")
        found.append(_key(jwk, sub, "serviceAccountKeys"))
    by_kid: dict[str, list[Key]] = {}
    for key in found:
        by_kid.setdefault(key.kid, []).append(key)
    return {kid: same[0] for kid, same in by_kid.items() if len(same) == 1}  # an ambiguous kid is trusted for none


def _list(doc: Mapping[str, Any], section: str, member: str) -> list[Any]:
    value = doc.get(section, {})
    items = value.get(member, []) if isinstance(value, dict) else None
    if not isinstance(items, list):
        raise BundleError(f"{section}.{member} must be a list")
    return items


def _revocations(doc: Mapping[str, Any]) -> dict[str, int]:
    entries = doc.get("revocations", [])
    if not isinstance(entries, list):
        raise BundleError("revocations must be a list")
    found: dict[str, int] = {}
    for entry in entries:
        sub, not_before = (entry.get("sub"), entry.get("notBefore")) if isinstance(entry, dict) else (None, None)
        if not isinstance(sub, str) or isinstance(not_before, bool) or not isinstance(not_before, int):
            raise BundleError("revocations: every entry needs a string sub and an integer notBefore")
        found[sub] = max(not_before, found.get(sub, not_before))
    return found


def _cidrs(doc: Mapping[str, Any]) -> dict[str, tuple[Network, ...]]:
    accounts = doc.get("accounts", {})
    if not isinstance(accounts, dict):
        raise BundleError("accounts must be an object")
    found: dict[str, tuple[Network, ...]] = {}
    for subject, entry in accounts.items():
        ranges = entry.get("cidrs") if isinstance(entry, dict) else None
        if not isinstance(ranges, list) or not all(isinstance(r, str) for r in ranges):
            raise BundleError(f"accounts: {subject} needs a list of cidrs")
        try:
            found[subject] = tuple(ipaddress.ip_network(r, strict=False) for r in ranges)
        except ValueError as exc:
            raise BundleError(f"accounts: {subject} has an invalid CIDR: {exc}") from exc
    return found


def _grants(doc: Mapping[str, Any]) -> tuple[dict[str, frozenset[str]], dict[str, tuple[str, ...]]]:
    given = doc.get("grants", {})
    if not isinstance(given, dict):
        raise BundleError("grants must be an object")
    permissions: dict[str, frozenset[str]] = {}
    services: dict[str, tuple[str, ...]] = {}
    for principal, grant in given.items():
        perms = grant.get("permissions") if isinstance(grant, dict) else None
        svcs = grant.get("services", []) if isinstance(grant, dict) else None
        if not isinstance(perms, list) or not all(isinstance(p, str) for p in perms):
            raise BundleError(f"grants: {principal} needs a list of permissions")
        if not isinstance(svcs, list) or not all(isinstance(s, str) for s in svcs):
            raise BundleError(f"grants: {principal} has services that are not a list of strings")
        permissions[principal] = frozenset(perms)
        services[principal] = tuple(svcs)
    return permissions, services


def parse(text: str | bytes) -> Bundle:
    """The bundle in ``text``; :class:`BundleError` when any part of it is unusable (all or nothing)."""
    raw = text.encode() if isinstance(text, str) else text
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"the trust bundle is not JSON: {type(exc).__name__} at {getattr(exc, 'pos', '?')}") from exc
    if not isinstance(doc, dict):
        raise BundleError("the trust bundle is not a JSON object")
    if doc.get("version") not in SUPPORTED_VERSIONS:
        raise BundleError(
            f"unsupported trust bundle version {doc.get('version')!r}; this sidecar reads {SUPPORTED_VERSIONS}"
        )
    issuer = doc.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise BundleError("the trust bundle names no issuer")
    grants, services = _grants(doc)
    return Bundle(
        issuer=issuer,
        keys=_keys(doc),
        revocations=_revocations(doc),
        cidrs=_cidrs(doc),
        grants=grants,
        services=services,
        digest=hashlib.sha256(raw).hexdigest(),
    )
