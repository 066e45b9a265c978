"""The trust bundle as the sidecar uses it: keys by kid, revocations, account source ranges, grants.

:func:`parse` reads the operator's ``bundle.json`` with the shared model (:mod:`tessera.trustbundle`)
and turns it into an immutable :class:`Bundle` ready for verification, or raises
:class:`tessera.errors.BundleError` with a message that names what is wrong (never key material).
Every key is tied to the one algorithm its type signs with, so a token can never choose how it is
checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
from collections.abc import Callable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, utils

from tessera import errors, trustbundle
from tessera.crypto import keys

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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
    sequence: int | None  # strictly increasing per namespace; None from writers before sequences


_SHA256 = hashes.SHA256()
_ECDSA = ec.ECDSA(_SHA256)
_PKCS1 = padding.PKCS1v15()
# The DER DigestInfo prefix for SHA-256 (RFC 8017 section 9.2, note 1); the digest follows it.
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def _checker(public: keys.PublicKey) -> Callable[[bytes, bytes], None]:
    if isinstance(public, ec.EllipticCurvePublicKey):
        verify_ec, encode = public.verify, utils.encode_dss_signature

        def check_ec(signature: bytes, data: bytes) -> None:
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            verify_ec(encode(r, s), data, _ECDSA)

        return check_ec
    if isinstance(public, ed25519.Ed25519PublicKey):
        return public.verify
    recover, sha256 = public.recover_data_from_signature, hashlib.sha256

    def check_rsa(signature: bytes, data: bytes) -> None:
        # RSASSA-PKCS1-v1_5 verification as RFC 8017 section 8.2.2 puts it: the public operation
        # (OpenSSL checks the 00 01 FF..FF 00 padding) must give exactly the DigestInfo of SHA-256 over
        # the data. Same check as verify(); about 1.5 us cheaper per token, as it skips OpenSSL's
        # per-call digest set-up (docs/benchmarks.md).
        if recover(signature, _PKCS1, None) != _SHA256_DIGEST_INFO + sha256(data).digest():
            raise InvalidSignature

    return check_rsa


def _signature_bytes(key: keys.PublicKey) -> int:
    algorithm = keys.algorithm_for(key)
    if algorithm in ("ES256", "EdDSA"):
        return 64
    return (key.key_size + 7) // 8  # type: ignore[union-attr]


def _key(jwk: trustbundle.Jwk, subject: str | None, where: str) -> Key:
    kid = jwk["kid"]
    try:
        public = keys.load_jwk({k: v for k, v in jwk.items() if k not in ("sub", "exp")})
    except errors.KeyMaterialError as exc:
        raise errors.BundleError(f"{where}: key {kid}: {exc}") from exc
    algorithm = keys.algorithm_for(public)
    if jwk.get("alg", algorithm) != algorithm:
        raise errors.BundleError(f"{where}: key {kid} says alg {jwk.get('alg')!r} but its type signs {algorithm}")
    return Key(kid, algorithm, public, subject, jwk.get("exp"), _signature_bytes(public), _checker(public))


def _keys(doc: trustbundle.Bundle) -> dict[str, Key]:
    found = [_key(jwk, None, "issuerKeys") for jwk in doc.issuer_keys]
    found += [_key(jwk, jwk["sub"], "serviceAccountKeys") for jwk in doc.account_keys]
    by_kid: dict[str, list[Key]] = {}
    for key in found:
        by_kid.setdefault(key.kid, []).append(key)
    return {kid: same[0] for kid, same in by_kid.items() if len(same) == 1}  # an ambiguous kid is trusted for none


def _cidrs(doc: trustbundle.Bundle) -> dict[str, tuple[Network, ...]]:
    found: dict[str, tuple[Network, ...]] = {}
    for subject, ranges in doc.accounts.items():
        try:
            found[subject] = tuple(ipaddress.ip_network(r, strict=False) for r in ranges)
        except ValueError as exc:
            raise errors.BundleError(f"accounts: {subject} has an invalid CIDR: {exc}") from exc
    return found


def parse(text: str | bytes) -> Bundle:
    """The bundle in ``text``; :class:`tessera.errors.BundleError` when any part of it is unusable (all or nothing)."""
    raw = text.encode() if isinstance(text, str) else text
    doc = trustbundle.parse(raw)
    return Bundle(
        issuer=doc.issuer,
        keys=_keys(doc),
        revocations=doc.not_before(),
        cidrs=_cidrs(doc),
        grants={principal: frozenset(g.permissions) for principal, g in doc.grants.items()},
        services={principal: g.services for principal, g in doc.grants.items()},
        digest=hashlib.sha256(raw).hexdigest(),
        sequence=doc.sequence,
    )
