"""ServiceAccounts: keep each account's token Secret current and its status true; revoke on disable and delete.

Kopf's events put the account on the work queue (a change of the account, of its token Secret, of
its grants); :func:`reconcile` puts the finalizer on first (a deletion is then always revoked, also
one made while the operator is down), decides in :mod:`tessera.core.tokens`, writes what differs, and
returns when the token is next due, so the queue looks again then (no timer per account). Observed
token facts come from an index over the token Secrets (selected by label), so a look costs no API
call. A deleted or damaged token Secret (its token replaced, its facts removed) is noticed by its
watch event and issued again at once. A revocation is stored before the token is withdrawn, so a
crash in between leaves the account revoked, never silently alive.

The status says what is true of the Secret: Ready with the token's expiry only while it holds a
token; a write that fails leaves Ready=False (and no expiry) once no valid token is left, and the
queue retries it with backoff.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections.abc import Mapping
from typing import Any

import kopf
import pydantic

from tessera import errors
from tessera.api import meta
from tessera.api import serviceaccount as sa_api
from tessera.core import clock, grants, issuer, manifests, revocations, status, tokens
from tessera.crypto import tokens as crypto_tokens
from tessera.kube import objects
from tessera.operator import runtime, statuses, workqueue

KIND = sa_api.INFO.kind
NAME_TAKEN = "SecretNameTaken"
NOT_WRITTEN = "TokenNotWritten"
NO_SIGNING_KEY = "IssuerKeysMissing"
QUIET_RECHECK_SECONDS = 300.0  # a problem only someone else can fix is looked at again this often, silently

logger = logging.getLogger("tessera.accounts")


def key(namespace: str, name: str) -> workqueue.Key:
    return (KIND, namespace, name)


async def serviceaccounts_index(body: kopf.Body, **_: Any) -> Any:
    """(namespace, name) -> the account; the bundle publisher, the grants and the reconcile read it here."""
    try:
        sa = sa_api.ServiceAccount.parse(body)
    except pydantic.ValidationError:
        return {}
    return {(sa.namespace, sa.name): sa}


async def token_secrets_index(
    namespace: str | None, labels: Mapping[str, str], annotations: Mapping[str, str], body: kopf.Body, **_: Any
) -> Any:
    """(namespace, service account) -> facts of the token in its Secret (None when it holds none).

    Only the facts are kept in memory, never the token itself."""
    encoded = (body.get("data") or {}).get(manifests.TOKEN_KEY)
    return {(namespace, labels[manifests.TOKEN_FOR_LABEL]): manifests.observed_token(dict(annotations), encoded)}


async def token_secret_changed(
    memo: runtime.Runtime, namespace: str | None, labels: Mapping[str, str], meta: kopf.Meta, type: str | None, **_: Any
) -> None:
    """A token Secret changed or went: our write is visible now (or superseded); look at its account."""
    ref = (namespace or "", labels[manifests.TOKEN_FOR_LABEL])
    if not memo.tokens_written.seen(ref, meta.get("resourceVersion"), gone=type == "DELETED"):
        memo.queue.add(key(*ref))  # not the echo of our own write: deleted or changed by someone


def _observed(rt: runtime.Runtime, ref: runtime.Key) -> tokens.ObservedToken | None:
    pending, written = rt.tokens_written.get(ref)
    return written if pending else runtime.first(rt.indexes.token_secrets, ref)


def _grants(rt: runtime.Runtime, subject: str) -> tuple[tokens.GrantsClaim, status.Summary]:
    engine = rt.grants.engine
    assert engine is not None  # the reconcile waits for it
    claim = tokens.token_grants(engine.result.tokens.get(subject, {}), rt.cfg.token_grants_max_bytes)
    return claim, grants.summary_status(engine.result.principals.get(subject))


async def reconcile(rt: runtime.Runtime, namespace: str, name: str) -> float | None:
    """Bring one account's token Secret and status to what they should be; seconds until the next look."""
    ref = (namespace, name)
    sa = runtime.first(rt.indexes.accounts, ref)
    if sa is None:
        return None
    if sa.metadata.deletion_timestamp is not None:
        await _deleted(rt, sa)
        return None
    await rt.grants.built.wait()  # tokens carry grants: never issue one without them
    if meta.FINALIZER not in sa.metadata.finalizers:  # before any token: its deletion must be revoked
        finalizers = [*sa.metadata.finalizers, meta.FINALIZER]
        version = await objects.set_finalizers(
            rt.kube, sa_api.INFO.plural, namespace, name, finalizers, sa.metadata.resource_version
        )
        if version is not None:  # its echo has nothing new to look at: this reconcile goes on from it
            rt.finalizers_written.wrote(key(namespace, name), version, None)
    claim, summary = _grants(rt, sa.subject)
    now = clock.utcnow()
    observed = _observed(rt, ref)
    current = statuses.stored(rt, KIND, namespace, name, sa.status.wire())
    not_before = revocations.not_before(rt.revocations.current, sa.subject)
    try:
        decision = tokens.decide(sa, observed, rt.issuer_keys.current, rt.cfg, now, not_before, claim)
    except errors.ConfigError:  # no issuer key may sign: its Secret is lost (see tessera.operator.keeper)
        message = "no token can be signed: " + issuer.missing_message(rt.cfg.namespace, rt.issuer_keys.lost)
        failed = status.failed_status(sa, NO_SIGNING_KEY, message, now, summary, observed)
        await statuses.write(rt, sa_api.INFO, sa, current, failed, [(NO_SIGNING_KEY, message)])
        return None  # looked at again when the keys come back
    try:
        await _apply(rt, sa, decision, observed, now)
    except errors.Conflict as exc:  # a Secret of that name is not ours: only its owner can fix that
        failed = status.failed_status(sa, NAME_TAKEN, str(exc), now, summary)
        if await statuses.write(rt, sa_api.INFO, sa, current, failed, [(NAME_TAKEN, str(exc))]):
            logger.warning("[%s/%s] %s", namespace, name, exc)
        return QUIET_RECHECK_SECONDS
    except errors.KubeError as exc:
        if not isinstance(exc, errors.Unavailable):  # the status tells what the Secret holds, if it can
            failed = status.failed_status(sa, NOT_WRITTEN, f"{exc}; retrying", now, summary, observed)
            if not _valid(observed, now):
                with contextlib.suppress(errors.KubeError):  # the reconcile's own failure is logged and retried
                    await statuses.write(rt, sa_api.INFO, sa, current, failed)
        raise
    new = status.serviceaccount_status(sa, decision, now, claim, summary)
    problems = [("GrantsTooLarge", claim.message())] if claim.omitted else []
    await statuses.write(rt, sa_api.INFO, sa, current, new, problems)
    _log(rt, sa, decision)
    return _until(decision.facts.refresh_at, now) if not isinstance(decision, tokens.Withdraw) else None


def _valid(observed: tokens.ObservedToken | None, now: datetime.datetime) -> bool:
    return observed is not None and observed is not tokens.UNKNOWN and observed.expires_at > now


def _until(moment: datetime.datetime | None, now: datetime.datetime) -> float | None:
    return None if moment is None else max((moment - now).total_seconds(), 0.0) + 0.01


def _log(rt: runtime.Runtime, sa: sa_api.ServiceAccount, decision: tokens.Decision) -> None:
    where = f"[{sa.namespace}/{sa.name}]"
    if isinstance(decision, tokens.Issue):
        rt.metrics.tokens.labels(decision.reason).inc()
        logger.info(
            "%s %s: issued a token signed by %s, expiring %s",
            where, decision.reason, decision.key.kid, decision.facts.expires_at,
        )  # fmt: skip
    elif isinstance(decision, tokens.Withdraw) and decision.pending:
        rt.metrics.withdrawn.inc()
        logger.info("%s Withdrew the token: %s", where, decision.message)


async def _apply(
    rt: runtime.Runtime,
    sa: sa_api.ServiceAccount,
    decision: tokens.Decision,
    observed: tokens.ObservedToken | None,
    now: datetime.datetime,
) -> None:
    ref = (sa.namespace, sa.name)
    if isinstance(decision, tokens.Issue):
        token = crypto_tokens.sign(decision.claims, decision.key.private_key, decision.key.kid)
        manifest = manifests.build_token_secret(sa, token, decision.facts)
        version = await objects.write_owned_secret(rt.kube, manifest, observed is not None)
        rt.tokens_written.wrote(ref, version, decision.facts)
        if tokens.repairs(observed, sa.status.token_expires_at, now):
            rt.metrics.healed.labels("token_secret").inc()
            logger.warning("[%s/%s] The token Secret was deleted or damaged: wrote a new token", *ref)
    elif isinstance(decision, tokens.Withdraw) and decision.pending:
        if observed is not None:  # revoke first: a crash before the withdrawal leaves it revoked
            await rt.revocations.revoke(sa.subject, now, observed)
            logger.info("[%s/%s] Revoked the tokens issued so far in every trust bundle: the account is disabled", *ref)
        name = manifests.token_secret_name(sa)
        emptied = await objects.withdraw_token(rt.kube, sa.namespace, name, manifests.token_annotation_keys())
        if emptied is not None:
            rt.tokens_written.wrote(ref, emptied, None)


async def _deleted(rt: runtime.Runtime, sa: sa_api.ServiceAccount) -> None:
    """Revoke what a deleted account was issued (its Secret goes with it), then let the deletion finish.

    The finalizer holds the account until this ran, so a deletion while the operator is down is
    revoked on its return."""
    if meta.FINALIZER not in sa.metadata.finalizers:
        return
    ref = (sa.namespace, sa.name)
    observed = _observed(rt, ref)
    if observed is not None:
        await rt.revocations.revoke(sa.subject, clock.utcnow(), observed)
        logger.info("[%s/%s] Revoked the tokens issued so far in every trust bundle: the account was deleted", *ref)
    others = [f for f in sa.metadata.finalizers if f != meta.FINALIZER]
    await objects.set_finalizers(
        rt.kube, sa_api.INFO.plural, sa.namespace, sa.name, others, sa.metadata.resource_version
    )


def forget(rt: runtime.Runtime, namespace: str, name: str) -> None:
    """The account is gone for good: drop what the operator kept about it."""
    rt.tokens_written.forget((namespace, name))
    rt.statuses_written.forget(key(namespace, name))
    rt.finalizers_written.forget(key(namespace, name))
    rt.queue.forget(key(namespace, name))
