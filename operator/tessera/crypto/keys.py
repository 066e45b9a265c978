"""Asymmetric keys: generate, serialise, publish as JWK, identify by RFC 7638 thumbprint.

Three algorithms, each tied to exactly one key type so a verifier can never be talked into using
a key with another algorithm (RFC 8725 section 3.1): ES256 = P-256, EdDSA = Ed25519, RS256 = RSA
of at least 2048 bits.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Literal, TypeAlias, get_args

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tessera import errors

Algorithm = Literal["ES256", "EdDSA", "RS256"]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
MIN_RSA_BITS = 2048

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
Jwk: TypeAlias = dict[str, Any]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(value: int, length: int | None = None) -> bytes:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(size, "big")


def generate(algorithm: Algorithm) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise errors.KeyMaterialError(f"unsupported algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")


def private_pem(key: PrivateKey) -> str:
    """PKCS#8 PEM, unencrypted: it only ever lands in a Secret."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def public_pem(key: PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def load_private_pem(pem: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError) as exc:
        raise errors.KeyMaterialError("the private key is not a readable unencrypted PEM") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise errors.KeyMaterialError(f"unsupported private key type {type(key).__name__}")
    check_strength(key.public_key())
    return key


def load_public_pem(pem: str) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise errors.KeyMaterialError("the public key is not a readable PEM (expected SubjectPublicKeyInfo)") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise errors.KeyMaterialError(f"unsupported public key type {type(key).__name__}")
    check_strength(key)
    return key


def check_strength(key: PublicKey) -> None:
    """Refuse keys too weak or of a curve we do not pair with an algorithm."""
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise errors.KeyMaterialError(f"RSA key of {key.key_size} bits is too weak; at least {MIN_RSA_BITS} needed")
    if isinstance(key, ec.EllipticCurvePublicKey) and not isinstance(key.curve, ec.SECP256R1):
        raise errors.KeyMaterialError(f"EC curve {key.curve.name} is not supported; use P-256")


def algorithm_for(key: PublicKey) -> Algorithm:
    """The one algorithm a key type is used with."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    return "RS256"


def _required_members(key: PublicKey) -> Jwk:
    """The members RFC 7638 hashes, in the JWK form of the key."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        numbers = key.public_numbers()
        return {
            "crv": "P-256",
            "kty": "EC",
            "x": b64url(_int_bytes(numbers.x, 32)),
            "y": b64url(_int_bytes(numbers.y, 32)),
        }
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}
    rsa_numbers = key.public_numbers()
    return {"e": b64url(_int_bytes(rsa_numbers.e)), "kty": "RSA", "n": b64url(_int_bytes(rsa_numbers.n))}


def thumbprint(key: PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the key id Tessera uses everywhere."""
    canonical = json.dumps(_required_members(key), separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def fingerprint(key: PublicKey) -> str:
    """SHA-256 of the DER SubjectPublicKeyInfo, hex with colons, as people compare keys by eye."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(der).hexdigest()
    return "SHA256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def public_jwk(key: PublicKey, kid: str | None = None) -> Jwk:
    """The public JWK with ``kid`` (default: thumbprint), ``alg`` and ``use: sig``."""
    jwk = _required_members(key)
    jwk.update({"kid": kid or thumbprint(key), "alg": algorithm_for(key), "use": "sig"})
    return jwk


def private_jwk(key: PrivateKey, kid: str | None = None) -> Jwk:
    """The private JWK (public members plus ``d`` and, for RSA, the CRT members), with ``kid``, ``alg``, ``use``."""
    jwk = public_jwk(key.public_key(), kid)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk["d"] = b64url(_int_bytes(key.private_numbers().private_value, 32))
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        jwk["d"] = b64url(raw)
    else:
        numbers = key.private_numbers()
        members = {"d": numbers.d, "p": numbers.p, "q": numbers.q}
        members.update(dp=numbers.dmp1, dq=numbers.dmq1, qi=numbers.iqmp)
        jwk.update({name: b64url(_int_bytes(value)) for name, value in members.items()})
    return jwk


PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")  # RFC 7518 6.2.2 and 6.3.2 (the API models' CEL rule too)


def load_jwk(jwk: Jwk) -> PublicKey:
    """A public key from its JWK; private members are refused so they never get stored."""
    if any(member in jwk for member in PRIVATE_JWK_MEMBERS):
        raise errors.KeyMaterialError("the JWK holds private key members; supply the public key only")
    try:
        key = _jwk_to_key(jwk)
    except (KeyError, ValueError, TypeError) as exc:
        raise errors.KeyMaterialError(f"the JWK is not a valid public key ({type(exc).__name__})") from exc
    check_strength(key)
    return key


def _jwk_to_key(jwk: Jwk) -> PublicKey:
    kty = jwk.get("kty")
    if kty == "EC":
        if jwk.get("crv") != "P-256":
            raise ValueError("curve")
        x, y = (int.from_bytes(b64url_decode(jwk[m]), "big") for m in ("x", "y"))
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    if kty == "OKP":
        if jwk.get("crv") != "Ed25519":
            raise ValueError("curve")
        return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    if kty == "RSA":
        n, e = (int.from_bytes(b64url_decode(jwk[m]), "big") for m in ("n", "e"))
        return rsa.RSAPublicNumbers(e, n).public_key()
    raise ValueError("kty")


def public_of(key: PrivateKey) -> PublicKey:
    return key.public_key()
