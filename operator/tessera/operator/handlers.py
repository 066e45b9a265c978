"""Kopf registrations: each handler parses, asks :mod:`tessera.core` what to do, applies it, reports.

Create, update, resume and the refresh timer all call the same level-based reconcile, so applying
it twice changes nothing the second time. Observed token facts come from an index over the token
Secrets (selected by label, never a cluster-wide Secret cache), so a timer tick costs no API call.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from tessera import errors
from tessera.api import meta
from tessera.api import serviceaccount as sa_api
from tessera.core import secrets, status, tokens
from tessera.core import settings as core_settings
from tessera.crypto import tokens as crypto_tokens
from tessera.kube import client, issuerkeys, objects

TRANSIENT_DELAY = 10.0


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def operator_startup(settings: kopf.OperatorSettings, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Configure Kopf, connect, and make sure the issuer keys exist (one key set even when replicas race)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=f"kopf.{meta.GROUP}")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=f"kopf.{meta.GROUP}")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    cfg: core_settings.Settings = memo.cfg
    memo.kube = client.connect()
    memo.locks, memo.written = {}, {}
    memo.keyset = await issuerkeys.load_or_create(memo.kube, cfg, utcnow())
    logger.info(
        "Loaded issuer keys %s from %s/%s",
        [k.kid for k in memo.keyset],
        cfg.namespace,
        core_settings.ISSUER_KEYS_SECRET,
    )
    if await objects.ensure_configmap(memo.kube, secrets.build_jwks_configmap(memo.keyset, cfg)):
        logger.info("Published the issuer JWKS in %s/%s", cfg.namespace, core_settings.ISSUER_JWKS_CONFIGMAP)


async def token_secrets_index(
    namespace: str | None, labels: Mapping[str, str], annotations: Mapping[str, str], body: kopf.Body, **_: Any
) -> Any:
    """(namespace, service account) -> facts of the token in its Secret (None when it holds none).

    Only the facts are kept in memory, never the token itself."""
    has_token = secrets.TOKEN_KEY in (body.get("data") or {})
    return {(namespace, labels[secrets.TOKEN_FOR_LABEL]): secrets.observed_token(dict(annotations), has_token)}


async def serviceaccount_reconcile(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: Any,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    sa = sa_api.ServiceAccount.parse(body)
    ref = (sa.namespace, sa.name)
    index: kopf.Index[tuple[str, str], tokens.ObservedToken | None] = kwargs["token_secrets_index"]
    async with memo.locks.setdefault(ref, asyncio.Lock()):  # a timer tick may race an update
        now = utcnow()
        observed = tokens.current(next(iter(index.get(ref, [])), None), memo.written.get(ref))
        decision = tokens.decide(sa, observed, memo.keyset, memo.cfg, now)
        try:
            await _apply(memo.kube, sa, body, decision, observed is not None)
        except errors.Conflict as exc:
            _report_failure(body, patch, sa, "SecretNameTaken", str(exc), now)
            raise kopf.PermanentError(str(exc)) from exc
        except errors.KubeError as exc:
            raise kopf.TemporaryError(f"{exc}; will retry", delay=TRANSIENT_DELAY) from exc
        if not isinstance(decision, tokens.Keep):
            memo.written[ref] = tokens.Written.of(decision, now)
    new_status = status.serviceaccount_status(sa, decision, now)
    if status.needs_update(body.get("status"), new_status):
        patch.status.update(new_status)
    if isinstance(decision, tokens.Issue):
        logger.info(
            "%s: issued a token signed by %s, expiring %s", decision.reason, decision.key.kid, decision.facts.expires_at
        )
    elif isinstance(decision, tokens.Withdraw):
        logger.info("Withdrew the token: %s", decision.message)


async def serviceaccount_forget(memo: Any, namespace: str | None, name: str | None, **_: Any) -> None:
    """Drop the per-account bookkeeping when an account is deleted (its Secret goes with it)."""
    memo.locks.pop((namespace, name), None)
    memo.written.pop((namespace, name), None)


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
    if status.needs_update(body.get("status"), new_status):  # warn once per change, not once per timer tick
        patch.status.update(new_status)
        kopf.warn(body, reason=reason, message=message)


def register(registry: kopf.OperatorRegistry, cfg: core_settings.Settings) -> None:
    """Register every handler on ``registry`` with the settings' intervals."""
    resource = (meta.GROUP, meta.VERSION, sa_api.INFO.plural)
    kopf.on.login(registry=registry)(kopf.login_via_client)  # a custom registry gets no default login
    kopf.on.startup(registry=registry)(operator_startup)
    kopf.index(
        "v1",
        "secrets",
        labels={meta.MANAGED_BY_LABEL: meta.MANAGED_BY_VALUE, secrets.TOKEN_FOR_LABEL: kopf.PRESENT},
        registry=registry,
    )(token_secrets_index)
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*resource, registry=registry, id="reconcile")(serviceaccount_reconcile)
    kopf.timer(
        *resource,
        interval=cfg.refresh_check_seconds,
        initial_delay=cfg.refresh_check_seconds,
        registry=registry,
        id="refresh",
    )(serviceaccount_reconcile)
    kopf.on.delete(*resource, registry=registry, optional=True, id="forget")(serviceaccount_forget)
