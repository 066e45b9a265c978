"""The status a ServiceAccount shows for a token decision."""

from __future__ import annotations

import datetime
from typing import Any

from tessera.api import serviceaccount as sa_api
from tessera.core import conditions, secrets, tokens


def serviceaccount_status(
    sa: sa_api.ServiceAccount, decision: tokens.Decision, now: datetime.datetime
) -> dict[str, Any]:
    """The whole status object (JSON form) after ``decision`` was applied."""
    ok = not isinstance(decision, tokens.Withdraw)
    condition = conditions.ready(ok, decision.reason, decision.message, sa.metadata.generation)
    status = sa_api.ServiceAccountStatus(
        conditions=conditions.set_condition(sa.status.conditions, condition, now),
        observed_generation=sa.metadata.generation,
        subject=sa.subject,
        secret_name=secrets.token_secret_name(sa),
        token_expires_at=None if isinstance(decision, tokens.Withdraw) else decision.facts.expires_at,
        token_refresh_at=None if isinstance(decision, tokens.Withdraw) else decision.facts.refresh_at,
        key_id=None if isinstance(decision, tokens.Withdraw) else decision.facts.key_id,
        services=sa.status.services,  # kept: the grants engine writes these
        bound_in=sa.status.bound_in,
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
    return updated.wire()


def _compact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def needs_update(current: Any, new: dict[str, Any]) -> bool:
    """Whether writing ``new`` would change the stored status (nulls and absent keys are equal)."""
    return bool(_compact(dict(current or {})) != _compact(new))
