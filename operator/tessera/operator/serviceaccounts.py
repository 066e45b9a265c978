"""ServiceAccount handlers: keep each account's token Secret current, revoke on disable and delete.

Create, update, resume and the refresh timer all call the same level-based reconcile, so applying
it twice changes nothing the second time. Observed token facts come from an index over the token
Secrets (selected by label), so a timer tick costs no API call. A revocation is stored before the
token is withdrawn, so a crash in between leaves the account revoked, never silently alive.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from typing import Any

import kopf
import pydantic

from tessera import errors
from tessera.api import serviceaccount as sa_api
from tessera.core import bundles, revocations, secrets, status, tokens
from tessera.crypto import tokens as crypto_tokens
from tessera.kube import client, objects

TRANSIENT_DELAY = 10.0
GRANTS_WAIT_SECONDS = 30.0
TokenIndex = kopf.Index[tuple[str, str], tokens.ObservedToken | None]


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def token_secrets_index(
    namespace: str | None, labels: Mapping[str, str], annotations: Mapping[str, str], body: kopf.Body, **_: Any
) -> Any:
    """(namespace, service account) -> facts of the token in its Secret (None when it holds none).

    Only the facts are kept in memory, never the token itself."""
    has_token = secrets.TOKEN_KEY in (body.get("data") or {})
    return {(namespace, labels[secrets.TOKEN_FOR_LABEL]): secrets.observed_token(dict(annotations), has_token)}


async def serviceaccounts_index(body: kopf.Body, **_: Any) -> Any:
    """(namespace, name) -> what the trust bundle needs of the account; every account is listed."""
    try:
        sa = sa_api.ServiceAccount.parse(body)
    except pydantic.ValidationError:
        return {}
    return {
        (sa.namespace, sa.name): bundles.Account(sa.subject, tuple(sorted(sa.spec.allowed_cidrs)), sa.spec.disabled)
    }


def _observed(memo: Any, index: TokenIndex, ref: tuple[str, str]) -> tokens.ObservedToken | None:
    return tokens.current(next(iter(index.get(ref, [])), None), memo.written.get(ref))


async def _grants(memo: Any, subject: str) -> tokens.Grants:
    """The grants the account's token should carry, once the grants engine has been built.

    Waiting keeps a restart from issuing tokens without grants and then replacing them."""
    hub = memo.grants
    try:
        await asyncio.wait_for(hub.built.wait(), GRANTS_WAIT_SECONDS)
    except TimeoutError as exc:
        raise kopf.TemporaryError("the grants are not computed yet; will retry", delay=TRANSIENT_DELAY) from exc
    return tokens.token_grants(hub.engine.result.tokens.get(subject, {}), memo.cfg.token_grants_max_bytes)


async def serviceaccount_reconcile(
    body: kopf.Body, patch: kopf.Patch, memo: Any, logger: kopf.Logger, **kw: Any
) -> None:
    sa = sa_api.ServiceAccount.parse(body)
    ref = (sa.namespace, sa.name)
    grants = await _grants(memo, sa.subject)
    async with memo.locks.setdefault(ref, asyncio.Lock()):  # a timer tick may race an update
        now = utcnow()
        observed = _observed(memo, kw["token_secrets_index"], ref)
        not_before = revocations.not_before(memo.revocations.current, sa.subject)
        decision = tokens.decide(sa, observed, memo.issuer_keys.current, memo.cfg, now, not_before, grants)
        try:
            if isinstance(decision, tokens.Withdraw) and decision.pending and observed is not None:
                await memo.revocations.revoke(sa.subject, now, observed)
                logger.info("Revoked the tokens issued so far in every trust bundle: the account is disabled")
            await _apply(memo.kube, sa, body, decision, observed is not None)
        except errors.Conflict as exc:
            _report_failure(body, patch, sa, "SecretNameTaken", str(exc), now)
            raise kopf.PermanentError(str(exc)) from exc
        except errors.KubeError as exc:
            raise kopf.TemporaryError(f"{exc}; will retry", delay=TRANSIENT_DELAY) from exc
        if not isinstance(decision, tokens.Keep):
            memo.written[ref] = tokens.Written.of(decision, now)
    new_status = status.serviceaccount_status(sa, decision, now, grants)
    if status.needs_update(status.token_part(body.get("status")), new_status):
        patch.status.update(new_status)
        if status.grants_left_out(sa.status, new_status):
            kopf.warn(body, reason="GrantsTooLarge", message=grants.message())
    if isinstance(decision, tokens.Issue):
        logger.info(
            "%s: issued a token signed by %s, expiring %s", decision.reason, decision.key.kid, decision.facts.expires_at
        )
    elif isinstance(decision, tokens.Withdraw) and decision.pending:
        logger.info("Withdrew the token: %s", decision.message)


async def serviceaccount_delete(memo: Any, body: kopf.Body, logger: kopf.Logger, **kw: Any) -> None:
    """Revoke what the account was issued (its Secret goes with it), then forget its bookkeeping.

    This handler holds a finalizer, so a deletion while the operator is down is revoked on its return."""
    sa = sa_api.ServiceAccount.parse(body)
    ref = (sa.namespace, sa.name)
    now = utcnow()
    observed = _observed(memo, kw["token_secrets_index"], ref)
    if observed is not None:
        try:
            await memo.revocations.revoke(sa.subject, now, observed)
        except errors.KubeError as exc:
            raise kopf.TemporaryError(f"{exc}; will retry", delay=TRANSIENT_DELAY) from exc
        logger.info("Revoked the tokens issued so far in every trust bundle: the account was deleted")
    memo.locks.pop(ref, None)
    memo.written.pop(ref, None)


async def _apply(
    kube: client.Clients, sa: sa_api.ServiceAccount, body: kopf.Body, decision: tokens.Decision, exists: bool
) -> None:
    if isinstance(decision, tokens.Issue):
        token = crypto_tokens.sign(decision.claims, decision.key.private_key, decision.key.kid)
        manifest = secrets.build_token_secret(sa, token, decision.facts)
        kopf.append_owner_reference(manifest, owner=body)
        await objects.write_owned_secret(kube, manifest, exists)
    elif isinstance(decision, tokens.Withdraw) and decision.pending:
        await objects.withdraw_token(kube, sa.namespace, secrets.token_secret_name(sa), secrets.token_annotation_keys())


def _report_failure(
    body: kopf.Body, patch: kopf.Patch, sa: sa_api.ServiceAccount, reason: str, message: str, now: datetime.datetime
) -> None:
    new_status = status.failed_status(sa, reason, message, now)
    if status.needs_update(status.token_part(body.get("status")), new_status):  # warn once per change, not per tick
        patch.status.update(new_status)
        kopf.warn(body, reason=reason, message=message)
