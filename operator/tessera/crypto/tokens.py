"""Minting signed JWT access tokens (RFC 9068 profile: header ``typ: at+jwt``) and verifying JWTs
from others (identity providers, service-account assertions) with PyJWT, every PyJWT exception
mapped to a stable reason code in :func:`reason_for`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from tessera import errors
from tessera.crypto import keys

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 (a media type)


def sign(claims: Mapping[str, Any], key: keys.PrivateKey, kid: str, typ: str = ACCESS_TOKEN_TYPE) -> str:
    """Sign ``claims`` with ``key``; the algorithm follows from the key type, never from a caller."""
    algorithm = keys.algorithm_for(keys.public_of(key))
    try:
        return jwt.encode(dict(claims), key, algorithm=algorithm, headers={"kid": kid, "typ": typ})
    except (TypeError, ValueError, jwt.PyJWTError) as exc:
        raise errors.TokenError(f"signing a token with key {kid} failed ({type(exc).__name__})") from exc


class Rejected(errors.TesseraError):
    """A token was refused; ``reason`` is a stable machine-readable code (never the token)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def reason_for(exc: jwt.PyJWTError) -> str:
    """The one place a PyJWT exception becomes a stable reason code (the most specific class first)."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing_{exc.claim}"
    table: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
        (jwt.ExpiredSignatureError, "expired"),
        (jwt.ImmatureSignatureError, "not_yet_valid"),
        (jwt.InvalidAudienceError, "wrong_audience"),
        (jwt.InvalidIssuerError, "wrong_issuer"),
        (jwt.InvalidIssuedAtError, "issued_in_future"),
        (jwt.InvalidSignatureError, "bad_signature"),
        (jwt.InvalidAlgorithmError, "alg_not_allowed"),
        (jwt.InvalidKeyError, "bad_key"),
        (jwt.DecodeError, "malformed_token"),
    )
    return next((reason for kind, reason in table if isinstance(exc, kind)), "invalid_token")


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, unverified: only for choosing which key checks the token."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Rejected("malformed_token", "the token is not a JWS in compact form") from exc
    return header


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims, unverified: only for choosing who verifies the token (its iss)."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise Rejected("malformed_token", "the token's claims are not readable JSON") from exc
    return claims


def verify(
    token: str,
    key: keys.PublicKey,
    *,
    issuer: str,
    audiences: Sequence[str] | None,
    leeway: int,
    required: Sequence[str] = ("exp", "iat", "iss", "sub"),
) -> dict[str, Any]:
    """Verify a JWT with ``key``. The algorithm is the one ``key``'s type signs with, never the header's
    (RFC 8725 section 3.1): a header naming another (``none``, HS256 with the public key as secret)
    is refused before any signature check. Times are checked against the system clock; ``audiences``
    None skips the audience check (for showing a token, never for accepting one)."""
    algorithm = keys.algorithm_for(key)
    header = unverified_header(token)
    if header.get("alg") != algorithm:
        raise Rejected("alg_key_mismatch", f"the token's alg is not {algorithm}, the one its key signs with")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=list(audiences) if audiences is not None else None,
            issuer=issuer,
            leeway=leeway,
            options={"require": list(required), "verify_aud": audiences is not None, "verify_iss": True},
        )
    except jwt.PyJWTError as exc:
        reason = reason_for(exc)
        raise Rejected(reason, f"the token was refused: {reason}") from exc
    return claims
