"""IdentityProviders: fetch the provider's keys on the schedule, report them in the status.

The status says whether the issuer can exchange the provider's tokens (Ready, the key count, the kids,
when they were fetched); a provider whose keys cannot be fetched is Ready=False with the reason and
one Warning per change, and is tried again with backoff (1 s doubling up to
:data:`tessera.core.providers.FAILED_RETRY`). The
issuer service fetches the keys it verifies with itself (see tessera.remote.providerkeys); this
reconcile never sits on a token's path.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf
import pydantic

from tessera.api import identityprovider as idp_api
from tessera.core import backoff, clock, providers, status
from tessera.operator import runtime, statuses, workqueue
from tessera.remote import providerkeys

KIND = idp_api.INFO.kind
logger = logging.getLogger("tessera.providers")


def key(name: str) -> workqueue.Key:
    return (KIND, "", name)


async def identityproviders_index(name: str, body: kopf.Body, **_: Any) -> Any:
    try:
        return {name: idp_api.IdentityProvider.parse(body)}
    except pydantic.ValidationError:
        return {}


async def reconcile(rt: runtime.Runtime, _: str, name: str) -> float | None:
    provider = runtime.first(rt.indexes.providers, name)
    if provider is None:
        return None
    now = clock.utcnow()
    if provider.spec.disabled or providers.fetch_due(provider, now):
        found, failure = None, None
        if not provider.spec.disabled:
            try:
                found = await providerkeys.fetch(rt.http, provider.spec)
            except providerkeys.FetchError as exc:
                failure = str(exc)
        new = providers.status(provider, found, failure, now)
        current = statuses.stored(rt, KIND, "", name, provider.status.wire())
        ready = status.ready_condition(new)
        findings = (
            [] if ready.get("status") == "True" or provider.spec.disabled else [(ready["reason"], ready["message"])]
        )
        if await statuses.write(rt, idp_api.INFO, provider, current, new, findings) and providers.changed(current, new):
            logger.info("[%s] %s: %s", name, ready.get("reason"), ready.get("message"))
        if failure is not None:  # tried again with backoff, quietly: the status and its Warning said it once
            failures = rt.provider_failures[name] = rt.provider_failures.get(name, 0) + 1
            return backoff.retry_delay(failures, name, base=1.0, cap=providers.FAILED_RETRY.total_seconds())
        rt.provider_failures.pop(name, None)
        if found is not None and found.source != "inline":
            return float(provider.spec.refresh_seconds)
    return _next_fetch(provider, now)


def _next_fetch(provider: idp_api.IdentityProvider, now: datetime.datetime) -> float | None:
    if provider.spec.disabled or provider.spec.jwks is not None:
        return None
    refresh = datetime.timedelta(seconds=provider.spec.refresh_seconds)
    due = providers.refresh_due(provider.status.last_fetch_time or now, refresh, now)
    return max((due - now).total_seconds(), 1.0)
