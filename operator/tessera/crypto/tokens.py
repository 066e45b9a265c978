"""Minting signed JWT access tokens (RFC 9068 profile: header ``typ: at+jwt``)."""

from __future__ import annotations

from collections.abc import Mapping
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
