"""Kopf registrations: which handler runs for what, and the operator's start-up and clean-up.

Handlers live by kind (:mod:`serviceaccounts`, :mod:`accountkeys`); the operator-wide work (issuer
key rotation, trust bundle publishing) runs as two background tasks started here. Watches are
narrowed on the server by label, so the operator never receives other people's Secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import signal
from typing import Any

import aiohttp
import kopf

from tessera.api import identityprovider as idp_api
from tessera.api import meta
from tessera.api import role as role_api
from tessera.api import rolebinding as rb_api
from tessera.api import serviceaccount as sa_api
from tessera.api import serviceaccountkey as sak_api
from tessera.core import secrets
from tessera.core import settings as core_settings
from tessera.kube import client, issuerkeys
from tessera.operator import (
    accountkeys,
    identityproviders,
    kopffixes,
    publisher,
    rolebindings,
    rotation,
    serviceaccounts,
    state,
)

MANAGED = f"{meta.MANAGED_BY_LABEL}={meta.MANAGED_BY_VALUE}"
INDEXES = ("serviceaccountkeys_index", "serviceaccounts_index", "trust_bundle_namespaces_index")


async def operator_startup(settings: kopf.OperatorSettings, memo: Any, logger: kopf.Logger, **kw: Any) -> None:
    """Configure Kopf, connect, load the issuer keys and revocations, start the background tasks."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=f"kopf.{meta.GROUP}")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=f"kopf.{meta.GROUP}")
    settings.persistence.finalizer = f"{meta.GROUP}/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.label_selectors["secrets"] = MANAGED
    cfg: core_settings.Settings = memo.cfg
    memo.kube = client.connect()
    memo.http = aiohttp.ClientSession()
    memo.locks, memo.written = {}, {}
    memo.hub, memo.issuer_keys, memo.grants = state.Hub(), state.Keys(), rolebindings.Grants()
    memo.activity = state.Activity(kopffixes.paused_set())
    await rotation.adopt(memo, await issuerkeys.load_or_create(memo.kube, cfg, datetime.datetime.now(datetime.UTC)))
    memo.revocations = await state.RevocationStore.load(memo.kube, cfg, memo.hub)
    logger.info(
        "Loaded %d revocations from %s/%s",
        len(memo.revocations.current),
        cfg.namespace,
        core_settings.REVOCATIONS_CONFIGMAP,
    )
    memo.tasks = [
        asyncio.create_task(publisher.publish_forever(memo, {name: kw[name] for name in INDEXES})),
        asyncio.create_task(rotation.rotate_forever(memo)),
        asyncio.create_task(
            memo.activity.watch(logger, memo.hub.indexed.is_set, lambda: os.kill(os.getpid(), signal.SIGTERM))
        ),
    ]


async def operator_cleanup(memo: Any, **_: Any) -> None:
    for task in getattr(memo, "tasks", []):
        task.cancel()
    for task in getattr(memo, "tasks", []):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if getattr(memo, "http", None) is not None:
        await memo.http.close()


async def trust_bundle_namespaces_index(name: str, uid: str | None, meta: kopf.Meta, **_: Any) -> Any:
    """Namespaces that opted in to a trust bundle (name -> uid, for events about them); a namespace
    being deleted accepts no new objects, so it leaves at once."""
    return {} if meta.get("deletionTimestamp") else {name: uid or ""}


async def inputs_changed(memo: Any, **_: Any) -> None:
    """After any change of a bundle input (indexes are updated before handlers run): wake the publisher."""
    memo.hub.indexed.set()
    memo.hub.touch()


def register(registry: kopf.OperatorRegistry, cfg: core_settings.Settings) -> None:
    """Register every handler on ``registry`` with the settings' intervals."""
    sa = (meta.GROUP, meta.VERSION, sa_api.INFO.plural)
    sak = (meta.GROUP, meta.VERSION, sak_api.INFO.plural)
    opted_in = {core_settings.TRUST_BUNDLE_LABEL: core_settings.TRUST_BUNDLE_LABEL_VALUE}
    kopf.on.login(registry=registry)(kopf.login_via_client)  # a custom registry gets no default login
    kopf.on.startup(registry=registry)(operator_startup)
    kopf.on.cleanup(registry=registry)(operator_cleanup)

    token_labels: dict[str, Any] = {meta.MANAGED_BY_LABEL: meta.MANAGED_BY_VALUE, secrets.TOKEN_FOR_LABEL: kopf.PRESENT}
    kopf.index("v1", "secrets", labels=token_labels, registry=registry)(serviceaccounts.token_secrets_index)
    kopf.index(*sa, registry=registry)(serviceaccounts.serviceaccounts_index)
    kopf.index(*sak, registry=registry)(accountkeys.serviceaccountkeys_index)
    kopf.index("v1", "namespaces", labels=opted_in, registry=registry)(trust_bundle_namespaces_index)
    for resource in (sa, sak, ("v1", "namespaces")):
        kopf.on.event(*resource, registry=registry, id="bundle-inputs")(inputs_changed)
    issuer_labels = {meta.MANAGED_BY_LABEL: meta.MANAGED_BY_VALUE, secrets.COMPONENT_LABEL: "issuer-keys"}
    kopf.on.event(
        "v1", "secrets", labels=issuer_labels, registry=registry, when=lambda namespace, **_: namespace == cfg.namespace
    )(rotation.issuer_keys_changed)

    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*sa, registry=registry, id="reconcile")(serviceaccounts.serviceaccount_reconcile)
        decorator(*sak, registry=registry, id="reconcile")(accountkeys.serviceaccountkey_reconcile)
    reconcilers = ((sa, serviceaccounts.serviceaccount_reconcile), (sak, accountkeys.serviceaccountkey_reconcile))
    for resource, handler in reconcilers:
        kopf.timer(
            *resource,
            interval=cfg.refresh_check_seconds,
            initial_delay=cfg.refresh_check_seconds,
            registry=registry,
            id="refresh",
        )(handler)
    kopf.on.delete(*sa, registry=registry, id="revoke")(serviceaccounts.serviceaccount_delete)
    idp = (meta.GROUP, meta.VERSION, idp_api.INFO.plural)
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*idp, registry=registry, id="reconcile")(identityproviders.identityprovider_reconcile)
    kopf.timer(*idp, interval=cfg.refresh_check_seconds, initial_delay=cfg.refresh_check_seconds, registry=registry,
               id="refresh")(identityproviders.identityprovider_reconcile)  # fmt: skip
    _register_grants(registry, sa)


def _register_grants(registry: kopf.OperatorRegistry, sa: tuple[str, str, str]) -> None:
    """Roles, RoleBindings, namespace services and accounts feed the grants engine."""
    role = (meta.GROUP, meta.VERSION, role_api.INFO.plural)
    binding = (meta.GROUP, meta.VERSION, rb_api.INFO.plural)
    kopf.index(*role, registry=registry)(rolebindings.roles_index)
    kopf.index(*binding, registry=registry)(rolebindings.rolebindings_index)
    kopf.index("v1", "namespaces", registry=registry)(rolebindings.namespace_services_index)
    kopf.index(*sa, registry=registry)(rolebindings.account_summaries_index)
    feeds = (
        (role, rolebindings.role_changed),
        (binding, rolebindings.rolebinding_changed),
        (("v1", "namespaces"), rolebindings.namespace_changed),
        (sa, rolebindings.account_changed),
    )
    for resource, handler in feeds:
        kopf.on.event(*resource, registry=registry, id="grants")(handler)
    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*role, registry=registry, id="accept")(rolebindings.role_reconcile)
