"""The live bundle channel's decisions (served by ``tessera issuer``, see :mod:`tessera.protocol`):
which poll a request asks for, whose credentials it carries, whether they may read the namespace,
how long a positive TokenReview is trusted, and what a refusal says. No I/O: the server applies them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence

from tessera import protocol

NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# A TokenReview's yes is trusted this long (never past the token's own expiry); kube-apiserver's
# webhook token authenticator caches for 2 minutes by default, a kubelet-projected token lives an hour.
REVIEW_TTL_SECONDS = 300.0
REFUSED_REVIEW_TTL_SECONDS = 10.0  # a refused token is not sent to the API server again for this long


class Refused(Exception):
    """An answer other than the bundle: ``reason`` is stable and machine-readable, ``message`` for
    people (never a token)."""

    def __init__(self, status: int, reason: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.retry_after = status, reason, message, retry_after

    def body(self) -> bytes:
        return json.dumps({"reason": self.reason, "message": self.message}).encode()

    def headers(self) -> dict[str, str]:
        found = {"Cache-Control": "no-store"}
        if self.status == 401:
            found["WWW-Authenticate"] = 'Bearer realm="tessera"' + (
                f', error="invalid_token", error_description="{self.reason}"' if self.reason != "missing_token" else ""
            )
        if self.retry_after is not None:
            found["Retry-After"] = str(self.retry_after)
        return found


@dataclasses.dataclass(frozen=True)
class Poll:
    namespace: str
    after: int  # the sequence the caller holds (0: none)
    wait: int  # seconds to hold the request when nothing newer exists


def _integer(query: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isdigit() or len(text) > 16:
        raise Refused(400, "bad_parameter", f"{name} must be a non-negative integer")
    return min(int(text), maximum)


def poll(namespace: str, query: Mapping[str, str]) -> Poll:
    """The poll a request asks for; a longer wait than allowed is shortened, not refused."""
    if not NAMESPACE.fullmatch(namespace):
        raise Refused(400, "bad_namespace", "the path names no valid namespace")
    unknown = set(query) - {"after", "wait"}
    if unknown:
        raise Refused(400, "bad_parameter", f"unknown parameters {sorted(unknown)[:5]}")
    after = _integer(query, "after", 0, 2**53 - 1)
    wait = _integer(query, "wait", protocol.DEFAULT_WAIT_SECONDS, protocol.MAX_WAIT_SECONDS)
    return Poll(namespace, after, wait)


def bearer(authorization: Sequence[str]) -> str:
    """The one bearer token of the request."""
    if not authorization:
        raise Refused(401, "missing_token", "send the Pod's Kubernetes token as Authorization: Bearer")
    if len(authorization) > 1:
        raise Refused(401, "multiple_authorization_headers", "send one Authorization header")
    scheme, _, token = authorization[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise Refused(401, "not_a_bearer_token", "send the Pod's Kubernetes token as Authorization: Bearer")
    return token


def may_read(token_namespace: str, wanted: Poll) -> None:
    """A Pod's token reads its own namespace's bundle, and no other."""
    if token_namespace != wanted.namespace:
        raise Refused(
            403,
            "other_namespace",
            f"a service account token of namespace {token_namespace} may read only that namespace's bundle",
        )


def trusted_until(now: float, token_expires: float | None, accepted: bool) -> float:
    """Until when a TokenReview's answer is reused for the same token."""
    if not accepted:
        return now + REFUSED_REVIEW_TTL_SECONDS
    until = now + REVIEW_TTL_SECONDS
    return min(until, token_expires) if token_expires is not None else until
