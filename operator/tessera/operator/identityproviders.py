"""IdentityProvider handlers: fetch the provider's keys on the schedule, report them in the status.

The status says whether the issuer can exchange the provider's tokens (Ready, the key count, the kids,
when they were fetched); a provider whose keys cannot be fetched is Ready=False with the reason and
one Warning per change. The issuer service fetches the keys it verifies with itself (see
tessera.remote.providerkeys); this reconcile never sits on a token's path.
"""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from tessera.api import identityprovider as idp_api
from tessera.core import providers
from tessera.remote import providerkeys


async def identityprovider_reconcile(
    body: kopf.Body, patch: kopf.Patch, memo: Any, logger: kopf.Logger, **_: Any
) -> None:
    provider = idp_api.IdentityProvider.parse(body)
    now = datetime.datetime.now(datetime.UTC)
    if not provider.spec.disabled and not providers.fetch_due(provider, now):
        return  # a timer tick with nothing due: no request to the provider, no write
    found, failure = None, None
    if not provider.spec.disabled:
        try:
            found = await providerkeys.fetch(memo.http, provider.spec)
        except providerkeys.FetchError as exc:
            failure = str(exc)
    new_status = providers.status(provider, found, failure, now)
    if provider.spec.disabled and not providers.changed(body.get("status"), new_status):
        return
    patch.status.update(new_status)
    ready = next(c for c in new_status["conditions"] if c["type"] == "Ready")
    if providers.changed(body.get("status"), new_status):
        if ready["status"] == "True":
            logger.info("%s: %s", ready["reason"], ready["message"])
        elif not provider.spec.disabled:
            kopf.warn(body, reason=ready["reason"], message=ready["message"])
