"""The status a ServiceAccount shows for a token decision."""

from __future__ import annotations

import datetime
from typing import Any

from tessera.api import meta
from tessera.api import serviceaccount as sa_api
from tessera.core import conditions, secrets, tokens

GRANTS_CONDITION = "TokenGrants"


def grants_condition(grants: tokens.Grants, generation: int | None) -> meta.Condition:
    """Whether the token carries the grants claim (False: too large, verifiers use the bundle)."""
    return meta.Condition(
        type=GRANTS_CONDITION,
        status="False" if grants.omitted else "True",
        reason="GrantsTooLarge" if grants.omitted else "Included",
        message=grants.message(),
        observed_generation=generation,
    )


def grants_left_out(previous: sa_api.ServiceAccountStatus, new: dict[str, Any]) -> bool:
    """Whether ``new`` is the first status to say the token's grants were left out (warn once, not per tick)."""
    was = any(c.type == GRANTS_CONDITION and c.status == "False" for c in previous.conditions)
    now_out = any(c.get("type") == GRANTS_CONDITION and c.get("status") == "False" for c in new.get("conditions", []))
    return now_out and not was


def _still_ready(condition: meta.Condition, generation: int | None) -> bool:
    return condition.type == "Ready" and condition.status == "True" and condition.observed_generation == generation


def serviceaccount_status(
    sa: sa_api.ServiceAccount,
    decision: tokens.Decision,
    now: datetime.datetime,
    grants: tokens.Grants = tokens.NO_GRANTS,
) -> dict[str, Any]:
    """The status the token side owns (JSON form) after ``decision`` was applied with ``grants``: all
    but the services summary, which the grants side writes. Leaving it out of this merge patch keeps
    a reconcile that read an older status from writing an older summary back."""
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
    status = sa_api.ServiceAccountStatus(
        conditions=found,
        observed_generation=sa.metadata.generation,
        subject=sa.subject,
        secret_name=secrets.token_secret_name(sa),
        token_expires_at=None if isinstance(decision, tokens.Withdraw) else decision.facts.expires_at,
        token_refresh_at=None if isinstance(decision, tokens.Withdraw) else decision.facts.refresh_at,
        key_id=None if isinstance(decision, tokens.Withdraw) else decision.facts.key_id,
    )
    wire = status.wire()
    for cleared in ("tokenExpiresAt", "tokenRefreshAt", "keyId"):
        wire.setdefault(cleared, None)
    return wire


def failed_status(sa: sa_api.ServiceAccount, reason: str, message: str, now: datetime.datetime) -> dict[str, Any]:
    """Ready=False with ``reason``; the rest of the status is left as it was."""
    condition = conditions.ready(False, reason, message, sa.metadata.generation)
    updated = sa.status.model_copy(
        update={
            "conditions": conditions.set_condition(sa.status.conditions, condition, now),
            "observed_generation": sa.metadata.generation,
        }
    )
    return token_part(updated.wire())


SUMMARY_KEYS = ("services", "boundIn")  # written by the grants side only


def token_part(stored: Any) -> dict[str, Any]:
    """A ServiceAccount status without the services summary, to compare with what the token side writes."""
    return {k: v for k, v in dict(stored or {}).items() if k not in SUMMARY_KEYS}


def _compact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def needs_update(current: Any, new: dict[str, Any]) -> bool:
    """Whether writing ``new`` would change the stored status (nulls and absent keys are equal)."""
    return bool(_compact(dict(current or {})) != _compact(new))
