"""What to do with a ServiceAccount's token: keep it, issue a new one, or withdraw it.

The decision is a list of named predicates evaluated in order (the first that fires wins), from
the spec, the token last written (read back from its Secret's annotations) and ``now``. A refresh
falls at 80 % of the TTL, or earlier so that the new token has time to reach the workload's file
before the old one expires (kubelet rewrites a mounted Secret only at its next sync, about a minute
later; a real node showed a refreshed 180 s token arriving 22 s after the old one had expired), but
never before half the TTL. Each refresh is moved earlier by up to a tenth of the TTL, by a hash of
the account's uid, so that a thousand accounts created together do not refresh together; the spread
is deterministic, so re-planning gives the same answer.

Tokens carry the subject's grants, ``"grants": {"<namespace>": ["<permission>", ...]}``, for consumers
that read only the JWT. A change of grants, like any change of the claims, makes a new token. When
the claim would exceed the operator's cap it is left out entirely (never cut short, which would
read as "fewer permissions"): a consumer that finds no ``grants`` claim must use the trust bundle.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tessera.api import serviceaccount as sa_api
from tessera.core import issuer, settings

REFRESH_FRACTION = 0.8
JITTER_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class ObservedToken:
    """Non-secret facts about the token currently in the Secret."""

    issued_at: datetime.datetime
    expires_at: datetime.datetime
    refresh_at: datetime.datetime
    key_id: str
    inputs: str
    alive_until: datetime.datetime  # the latest expiry of any token issued for the account so far


# Facts standing for a token whose annotations are missing or unreadable: every check fires on
# them, so the token is replaced (or withdrawn), never trusted.
UNKNOWN = ObservedToken(
    issued_at=datetime.datetime.min.replace(tzinfo=datetime.UTC),
    expires_at=datetime.datetime.min.replace(tzinfo=datetime.UTC),
    refresh_at=datetime.datetime.min.replace(tzinfo=datetime.UTC),
    key_id="",
    inputs="",
    alive_until=datetime.datetime.max.replace(tzinfo=datetime.UTC),
)


@dataclasses.dataclass(frozen=True)
class Issue:
    reason: str
    message: str
    claims: dict[str, Any]
    key: issuer.IssuerKey
    facts: ObservedToken


@dataclasses.dataclass(frozen=True)
class Keep:
    reason: str
    message: str
    facts: ObservedToken


@dataclasses.dataclass(frozen=True)
class Withdraw:
    reason: str
    message: str
    pending: bool = True  # False when the Secret already holds no token: nothing to write


Decision = Issue | Keep | Withdraw
GRANTS_CLAIM = "grants"


@dataclasses.dataclass(frozen=True)
class GrantsClaim:
    """The grants claim of a token: ``claim`` is None when it was left out for being over ``cap`` bytes."""

    claim: dict[str, list[str]] | None
    size: int
    cap: int

    @property
    def omitted(self) -> bool:
        return self.claim is None

    def message(self) -> str:
        if self.claim is None:
            return (
                f"the grants take {self.size} bytes, over the token cap of {self.cap} "
                "(TESSERA_TOKEN_GRANTS_MAX_BYTES): the token carries no grants claim; "
                "verifiers use the trust bundle's grants"
            )
        return f"the token carries the grants of {len(self.claim)} namespaces ({self.size} bytes)"


def token_grants(by_namespace: Mapping[str, Iterable[str]], cap_bytes: int) -> GrantsClaim:
    """The grants claim, sorted and deduplicated: namespace -> permissions as the roles wrote them.
    No grants at all is ``{}``, an explicit "nothing"; over ``cap_bytes`` of compact JSON, None."""
    claim = {ns: sorted(set(by_namespace[ns])) for ns in sorted(by_namespace)}
    size = len(json.dumps(claim, sort_keys=True, separators=(",", ":")).encode())
    return GrantsClaim(claim if size <= cap_bytes else None, size, cap_bytes)


NO_GRANTS = token_grants({}, settings.TOKEN_GRANTS_MAX_BYTES)  # an account bound nowhere
# Tokens of the issuer service carry no grants claim: it does not compute grants, and a consumer that
# finds no claim uses the trust bundle's grants (which are newer than any token anyway).
GRANTS_IN_BUNDLE = GrantsClaim(None, 0, 0)


def ttl_seconds(sa: sa_api.ServiceAccount, cfg: settings.Settings) -> int:
    """The account's TTL, capped by the operator's maximum token lifetime."""
    return min(sa.spec.token.ttl_seconds, int(cfg.max_token_ttl.total_seconds()))


def alive_until(observed: ObservedToken, now: datetime.datetime, cfg: settings.Settings) -> datetime.datetime:
    """Until when a token of the account may be alive; unknown facts assume the longest lifetime."""
    if observed is UNKNOWN:
        return now + cfg.max_token_ttl
    return observed.alive_until


def inputs_digest(sa: sa_api.ServiceAccount, cfg: settings.Settings, grants: GrantsClaim = NO_GRANTS) -> str:
    """A digest of everything a token's claims depend on besides time; a change forces a new token."""
    material = {
        "iss": cfg.issuer,
        "aud": audiences(sa, cfg),
        "ttl": ttl_seconds(sa, cfg),
        "cidrs": sorted(sa.spec.allowed_cidrs),
        "grants": grants.claim,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def audiences(sa: sa_api.ServiceAccount, cfg: settings.Settings) -> list[str]:
    return sorted(sa.spec.token.audiences) or [cfg.default_audience]


def refresh_after(ttl_seconds: float, margin_seconds: float) -> float:
    """Seconds after issue when a token is due: at 80 % of its life, earlier if that would leave less
    than ``margin_seconds`` for the new token to reach the workload, never before half its life."""
    return min(REFRESH_FRACTION * ttl_seconds, max(ttl_seconds - margin_seconds, ttl_seconds / 2))


def refresh_at(uid: str, issued_at: datetime.datetime, ttl_seconds: int, margin_seconds: float) -> datetime.datetime:
    """:func:`refresh_after`, moved earlier by up to a tenth of the lifetime by uid and issue time."""
    spread = int.from_bytes(hashlib.sha256(f"{uid}/{issued_at.isoformat()}".encode()).digest()[:4], "big")
    jitter = (spread / 2**32) * JITTER_FRACTION * ttl_seconds
    return issued_at + datetime.timedelta(seconds=refresh_after(ttl_seconds, margin_seconds) - jitter)


def claims(
    sa: sa_api.ServiceAccount,
    cfg: settings.Settings,
    key: issuer.IssuerKey,
    now: datetime.datetime,
    grants: GrantsClaim = NO_GRANTS,
    *,
    aud: Sequence[str] | None = None,
    jti: str | None = None,
) -> dict[str, Any]:
    """RFC 9068 access-token claims for the account, issued at ``now`` (whole seconds). ``aud`` (default:
    the account's audiences) and ``jti`` (default: derived from the account and the moment, which is
    unique for the operator's one token at a time) are set by the issuer service for each exchange."""
    iat = int(now.timestamp())
    aud = list(aud) if aud is not None else audiences(sa, cfg)
    jti = jti or hashlib.sha256(f"{sa.metadata.uid}/{iat}/{key.kid}".encode()).hexdigest()[:32]
    body: dict[str, Any] = {
        "iss": cfg.issuer,
        "sub": sa.subject,
        "aud": aud[0] if len(aud) == 1 else aud,
        "iat": iat,
        "nbf": iat,
        "exp": iat + ttl_seconds(sa, cfg),
        "jti": jti,
        "client_id": sa.subject,
    }
    if sa.spec.allowed_cidrs:
        body["cidrs"] = sorted(sa.spec.allowed_cidrs)
    if grants.claim is not None:
        body[GRANTS_CLAIM] = grants.claim
    return body


def repairs(
    observed: ObservedToken | None, status_expires_at: datetime.datetime | None, now: datetime.datetime
) -> bool:
    """Whether issuing now repairs a damaged Secret: the status says a token is there and still valid, but
    the Secret holds none (deleted, emptied) or one its facts do not describe (replaced by hand)."""
    if observed is UNKNOWN:
        return True
    return observed is None and status_expires_at is not None and status_expires_at > now


Reason = tuple[str, str]


def reissue_reason(
    observed: ObservedToken, keyset: issuer.KeySet, inputs: str, now: datetime.datetime
) -> Reason | None:
    """Why the current token must be replaced, first match wins; None keeps it."""
    checks: tuple[tuple[bool, str, str], ...] = (
        (observed.inputs != inputs, "TokenReissued", "the token settings or grants changed; a new token was issued"),
        (
            observed.key_id not in {k.kid for k in keyset},
            "TokenReissued",
            "the signing key was retired; a new token was issued",
        ),
        (now >= observed.refresh_at, "TokenRefreshed", "the token was refreshed before expiry"),
    )
    return next(((reason, message) for fired, reason, message in checks if fired), None)


def decide(
    sa: sa_api.ServiceAccount,
    observed: ObservedToken | None,
    keyset: issuer.KeySet,
    cfg: settings.Settings,
    now: datetime.datetime,
    not_before: datetime.datetime | None = None,
    grants: GrantsClaim = NO_GRANTS,
) -> Decision:
    """Keep, issue or withdraw the account's token; see the module docstring for the order.

    ``not_before`` is the account's revocation moment, if any: a new token is never issued before
    it (at most a second ahead of ``now``), so a re-enabled account's token is not refused.
    ``grants`` is the claim the token should carry; a token carrying other grants is replaced."""
    if sa.spec.disabled:
        return Withdraw("Disabled", "the account is disabled: no token is issued", pending=observed is not None)
    inputs = inputs_digest(sa, cfg, grants)
    found: Reason = ("TokenIssued", "a token was issued")
    if observed is not None:
        why = reissue_reason(observed, keyset, inputs, now)
        if why is None:
            return Keep("TokenIssued", "the token is current", observed)
        found = why
    key = issuer.signing_key(keyset, now)
    body = claims(sa, cfg, key, max(now, not_before) if not_before is not None else now, grants)
    issued = datetime.datetime.fromtimestamp(body["iat"], datetime.UTC)
    expires = datetime.datetime.fromtimestamp(body["exp"], datetime.UTC)
    facts = ObservedToken(
        issued_at=issued,
        expires_at=expires,
        refresh_at=refresh_at(sa.metadata.uid or sa.name, issued, ttl_seconds(sa, cfg), cfg.refresh_margin_seconds),
        key_id=key.kid,
        inputs=inputs,
        alive_until=max(expires, alive_until(observed, now, cfg)) if observed is not None else expires,
    )
    return Issue(found[0], found[1], body, key, facts)
