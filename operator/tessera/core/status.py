"""The status a ServiceAccount shows for a token decision; when a status change deserves a Warning."""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from tessera.api import meta
from tessera.api import serviceaccount as sa_api
from tessera.core import conditions, manifests, tokens

GRANTS_CONDITION = "TokenGrants"


def grants_condition(grants: tokens.GrantsClaim, generation: int | None) -> meta.Condition:
    """Whether the token carries the grants claim (False: too large, verifiers use the bundle)."""
    return meta.Condition(
        type=GRANTS_CONDITION,
        status="False" if grants.omitted else "True",
        reason="GrantsTooLarge" if grants.omitted else "Included",
        message=grants.message(),
        observed_generation=generation,
    )


def _still_ready(condition: meta.Condition, generation: int | None) -> bool:
    return condition.type == "Ready" and condition.status == "True" and condition.observed_generation == generation


Summary = dict[str, list[str]]  # services and boundIn: see :func:`tessera.core.grants.summary_status`
NO_SUMMARY: Summary = {"services": [], "boundIn": []}
TOKEN_FIELDS = ("tokenExpiresAt", "tokenRefreshAt", "keyId")


def serviceaccount_status(
    sa: sa_api.ServiceAccount,
    decision: tokens.Decision,
    now: datetime.datetime,
    grants: tokens.GrantsClaim = tokens.NO_GRANTS,
    summary: Summary = NO_SUMMARY,
) -> dict[str, Any]:
    """The whole status (JSON form) after ``decision`` was applied with ``grants``, with the services
    ``summary``: one writer, so a cold start writes each account's status once."""
    ok = not isinstance(decision, tokens.Withdraw)
    generation = sa.metadata.generation
    kept = [c for c in sa.status.conditions if c.type != GRANTS_CONDITION]
    ready = conditions.ready(ok, decision.reason, decision.message, generation)
    if isinstance(decision, tokens.Keep):  # say "issued" or "refreshed" until the next token, not "current"
        ready = next((c for c in kept if _still_ready(c, generation)), ready)
    found = conditions.set_condition(kept, ready, now)
    if ok:
        previous = [c for c in sa.status.conditions if c.type == GRANTS_CONDITION]
        found = conditions.set_condition(found + previous, grants_condition(grants, generation), now)
    facts = None if isinstance(decision, tokens.Withdraw) else decision.facts
    return _wire(sa, found, facts, summary)


def failed_status(
    sa: sa_api.ServiceAccount,
    reason: str,
    message: str,
    now: datetime.datetime,
    summary: Summary = NO_SUMMARY,
    token: tokens.ObservedToken | None = None,
) -> dict[str, Any]:
    """Ready=False with ``reason``: the token fields describe ``token`` (one the Secret still holds and
    that has not expired) or are null, so the status never shows a token that does not exist."""
    condition = conditions.ready(False, reason, message, sa.metadata.generation)
    found = conditions.set_condition(sa.status.conditions, condition, now)
    alive = token if token is not None and token is not tokens.UNKNOWN and token.expires_at > now else None
    return _wire(sa, found, alive, summary)


def _wire(
    sa: sa_api.ServiceAccount,
    found: list[meta.Condition],
    facts: tokens.ObservedToken | None,
    summary: Summary,
) -> dict[str, Any]:
    shown = sa_api.ServiceAccountStatus(
        conditions=found,
        observed_generation=sa.metadata.generation,
        subject=sa.subject,
        secret_name=manifests.token_secret_name(sa),
        token_expires_at=facts.expires_at if facts else None,
        token_refresh_at=facts.refresh_at if facts else None,
        key_id=facts.key_id if facts else None,
        services=summary["services"],
        bound_in=summary["boundIn"],
    )
    wire = shown.wire()
    for cleared in TOKEN_FIELDS:
        wire.setdefault(cleared, None)
    return wire


def _compact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def digest(stored: Any) -> str:
    """A digest of a status (nulls and absent keys alike), to compare one with another without keeping it."""
    text = json.dumps(_compact(dict(stored or {})), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def needs_update(current: Any, new: dict[str, Any]) -> bool:
    """Whether writing ``new`` would change the stored status (nulls and absent keys are equal)."""
    return bool(_compact(dict(current or {})) != _compact(new))


def ready_condition(stored: Any) -> dict[str, Any]:
    """The Ready condition of a stored status (JSON form), {} when there is none."""
    found = [c for c in (dict(stored or {}).get("conditions") or []) if c.get("type") == "Ready"]
    return dict(found[0]) if found else {}


def to_warn(stored: Any, findings: Sequence[tuple[str, str]], generation: int | None) -> list[tuple[str, str]]:
    """Of the problems (reason, message) the new status reports, those to post a Warning about: the ones no
    stored condition (status False, this generation) reports yet. A Warning is posted with the status
    that first reports a problem, so each problem is warned about once per change of the object, never
    again at a later reconcile, a retry or a restart (they find it in the stored status)."""
    told = [
        str(c.get("message") or "")
        for c in dict(stored or {}).get("conditions") or []
        if c.get("status") == "False" and c.get("observedGeneration") == generation
    ]
    return [(reason, message) for reason, message in findings if not any(message in t for t in told)]
