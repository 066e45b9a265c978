"""One request, one decision: 200 with the caller's identity, 401 (not authenticated) or 403 (not allowed).

The order: a rule that lets anyone in needs no token; otherwise the bearer token is authenticated
(401 and an RFC 6750 ``WWW-Authenticate`` on failure), then the path must be canonical and match a
rule, the caller's address must be inside its account's ranges, and the rule's permission must be
granted in this namespace (403 with ``insufficient_scope``). Every outcome has a short reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal, get_args

from tessera.sidecar import rules, verify

SUBJECT_HEADER = "X-Tessera-Subject"
ISSUER_HEADER = "X-Tessera-Issuer"
PERMISSIONS_HEADER = "X-Tessera-Permissions"
REASON_HEADER = "X-Tessera-Reason"
IDENTITY_HEADERS = (SUBJECT_HEADER, ISSUER_HEADER, PERMISSIONS_HEADER)
REALM = "tessera"

# Every outcome's reason (X-Tessera-Reason): a token's refusal, the request's own, or the allowed kinds.
Reason = (
    verify.Refusal
    | rules.MatchReason
    | Literal["missing_token", "multiple_authorization_headers", "not_a_bearer_token"]
    | Literal["source_not_allowed", "permission_denied", "public", "authenticated", "permitted"]
    | Literal["not_ready", "verification_error"]  # the server's: no bundle yet; a bug in verification
)
REASONS: frozenset[str] = frozenset(
    reason for part in get_args(Reason) for reason in (get_args(part) if get_args(part) else (part,))
)


@dataclasses.dataclass(frozen=True)
class Decision:
    status: int  # 200, 401 or 403
    reason: Reason
    identity: verify.Identity | None = None
    error: str | None = None  # RFC 6750 error code for WWW-Authenticate

    @property
    def allowed(self) -> bool:
        return self.status == 200

    def headers(self) -> dict[str, str]:
        """Response headers: the verified identity on success, the challenge and reason otherwise."""
        found: dict[str, str] = {REASON_HEADER: self.reason}
        if self.status == 200:
            if self.identity is not None:
                found[SUBJECT_HEADER] = self.identity.subject
                found[ISSUER_HEADER] = self.identity.issuer
                found[PERMISSIONS_HEADER] = " ".join(sorted(self.identity.permissions))
            return found
        challenge = f'Bearer realm="{REALM}"'
        if self.error is not None:
            challenge += f', error="{self.error}", error_description="{self.reason}"'
        found["WWW-Authenticate"] = challenge
        return found


def unauthenticated(reason: Reason, error: str | None = "invalid_token") -> Decision:
    return Decision(401, reason, None, error)


def forbidden(reason: Reason, identity: verify.Identity | None = None) -> Decision:
    return Decision(403, reason, identity, "insufficient_scope")


def bearer(authorization: Sequence[str]) -> str | Decision:
    """The token of the one ``Authorization: Bearer <token>`` header, or the 401 to answer instead."""
    if not authorization:
        return unauthenticated("missing_token", None)  # RFC 6750 3.1: no error code without credentials
    if len(authorization) > 1:
        return unauthenticated("multiple_authorization_headers", "invalid_request")
    scheme, _, token = authorization[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not token or " " in token.strip():
        return unauthenticated("not_a_bearer_token", "invalid_request")
    return token.strip()


def decide(
    verifier: verify.Verifier,
    ruleset: Sequence[rules.Rule],
    method: str,
    target: str,
    authorization: Sequence[str],
    source: str | None,
    now: float,
) -> Decision:
    found = rules.match(ruleset, method, target)
    if found.rule is not None and found.rule.access == "anyone":
        return Decision(200, "public")
    token = bearer(authorization)
    if isinstance(token, Decision):
        return token
    identity = verifier.authenticate(token, now)
    if isinstance(identity, verify.Failure):
        return unauthenticated(identity.reason)
    if found.rule is None:
        return forbidden(found.reason, identity)
    if not verify.source_allowed(identity, source):
        return forbidden("source_not_allowed", identity)
    if found.rule.access == "authenticated":
        return Decision(200, "authenticated", identity)
    assert found.rule.permission is not None
    if not verify.permitted(identity.permissions, found.rule.permission):
        return forbidden("permission_denied", identity)
    return Decision(200, "permitted", identity)
