"""Kopf registrations: what Kopf watches and indexes, and the operator's start-up and clean-up.

Kopf watches the resources and fills the indexes; one event handler per resource feeds the grants
engine, wakes the bundle publisher and puts the object on the work queue (:mod:`workqueue`), whose
workers reconcile by kind (:mod:`serviceaccounts`, :mod:`accountkeys`, :mod:`rolebindings`,
:mod:`identityproviders`). Kopf has no change handler and writes nothing per object (no finalizer, no
last-handled or progress annotation): the ServiceAccount finalizer is the operator's own.
Operator-wide work runs as background tasks started here: bundle publishing, key rotation, keeping
the operator namespace's objects whole.
Watches are narrowed on the server (Secrets by label, ConfigMaps by name), so the operator never
receives other people's Secrets or ConfigMaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import kopf

from tessera.api import identityprovider as idp_api
from tessera.api import meta
from tessera.api import role as role_api
from tessera.api import rolebinding as rb_api
from tessera.api import serviceaccount as sa_api
from tessera.api import serviceaccountkey as sak_api
from tessera.core import accountkeys as core_keys
from tessera.core import manifests
from tessera.core import settings as core_settings
from tessera.kube import client, informer, issuerkeys
from tessera.operator import (
    accountkeys,
    identityproviders,
    keeper,
    kopffixes,
    metrics,
    publisher,
    rolebindings,
    rotation,
    runtime,
    serviceaccounts,
    state,
    workqueue,
)

MANAGED = f"{meta.MANAGED_BY_LABEL}={meta.MANAGED_BY_VALUE}"
WORKERS = 48  # reconciles at once (a new account takes three writes in a row); the client has as many connections
QUEUE = "queue"  # the id of the event handlers (runner.QuietTimers keeps their "succeeded" lines out)
EVENT_HANDLER_IDS = (QUEUE, "token-secret", "key-secret")
log = logging.getLogger("tessera.operator")


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf keeps no last-handled state on Tessera's objects: there is no change handler to diff for, and
    storing one would cost a write for every create and update. Nor does it build the object's essence
    at each event (two deep copies of the body): only change handlers, daemons and timers use it, and
    Tessera registers none (:func:`register`)."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def _configure(settings: kopf.OperatorSettings) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=f"kopf.{meta.GROUP}")
    settings.persistence.diffbase_storage = NoDiffBase()
    # Kopf adds no finalizer (no handler of ours needs one); Tessera's own (meta.FINALIZER) is its to keep.
    settings.persistence.finalizer = f"kopf.{meta.GROUP}/finalizer"
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.label_selectors["secrets"] = MANAGED
    # Kopf's own requests (its watches above all) retry for about ten minutes before giving up, which
    # would stop the operator: an API server outage is waited out, not turned into a restart.
    settings.networking.error_backoffs = (1, 1, 2, 3, 5, 8, *(10,) * 60)


def _informers(rt: runtime.Runtime) -> list[informer.Informer[Any]]:
    """The ConfigMaps the operator keeps, each watched by name (RBAC grants list and watch by name)."""
    loop = asyncio.get_running_loop()
    core, ns = rt.kube.core, rt.cfg.namespace

    def waking(signal_: state.Signal) -> Any:
        return lambda _key: loop.call_soon_threadsafe(signal_.touch)

    def data(obj: dict[str, Any]) -> dict[str, str]:
        return dict(obj.get("data") or {})

    def named(name: str) -> str:
        return f"metadata.name={name}"

    group = (meta.GROUP, meta.VERSION, rb_api.INFO.plural)

    def bindings(namespace: str | None) -> informer.Informer[runtime.BindingEntry]:
        if namespace is None:
            return informer.Informer(
                rt.kube.api, "rolebindings", rt.kube.custom.list_cluster_custom_object,
                rolebindings.binding_entry, on_binding, group=group[0], version=group[1], plural=group[2],
            )  # fmt: skip
        return informer.Informer(
            rt.kube.api, f"rolebindings in {namespace}", rt.kube.custom.list_namespaced_custom_object,
            rolebindings.binding_entry, on_binding, group=group[0], version=group[1], namespace=namespace,
            plural=group[2],
        )  # fmt: skip

    def on_binding(key: informer.Key | None) -> None:
        loop.call_soon_threadsafe(rolebindings.binding_event, rt, key)

    rt.rolebindings = informer.Spread(bindings, rt.watch_namespaces)
    rt.bundles = informer.Informer(
        rt.kube.api, "trust bundles", core.list_config_map_for_all_namespaces, publisher.observed_bundle,
        waking(rt.hub), field_selector=named(core_settings.TRUST_BUNDLE_CONFIGMAP),
    )  # fmt: skip
    rt.issuer_secret = informer.Informer(
        rt.kube.api, "issuer keys", core.list_namespaced_secret, issuerkeys.parse, waking(rt.keeper),
        namespace=ns, field_selector=named(core_settings.ISSUER_KEYS_SECRET),
    )  # fmt: skip
    rt.jwks_configmap = informer.Informer(
        rt.kube.api, "issuer JWKS", core.list_namespaced_config_map, data, waking(rt.keeper),
        namespace=ns, field_selector=named(core_settings.ISSUER_JWKS_CONFIGMAP),
    )  # fmt: skip
    rt.revocations_configmap = informer.Informer(
        rt.kube.api, "revocations", core.list_namespaced_config_map, data, waking(rt.keeper),
        namespace=ns, field_selector=named(core_settings.REVOCATIONS_CONFIGMAP),
    )  # fmt: skip
    return [rt.bundles, rt.issuer_secret, rt.jwks_configmap, rt.revocations_configmap, *rt.rolebindings.informers]


async def operator_startup(
    settings: kopf.OperatorSettings, memo: runtime.Runtime, logger: kopf.Logger, **kw: Any
) -> None:
    """Configure Kopf, connect, load the issuer keys and revocations, start the background tasks."""
    _configure(settings)
    rt = memo
    rt.metrics = metrics.Metrics()
    rt.kube = client.connect(WORKERS, rt.metrics.api)
    rt.http = aiohttp.ClientSession()
    rt.hub, rt.issuer_keys, rt.grants, rt.keeper = state.Hub(), state.Keys(), state.GrantsState(), state.Signal()
    rt.activity = state.Activity(kopffixes.paused_set())
    rt.indexes = runtime.Indexes.from_kwargs(kw)
    reconcilers: Mapping[str, workqueue.Reconcile] = {
        serviceaccounts.KIND: lambda ns, name: serviceaccounts.reconcile(rt, ns, name),
        accountkeys.KIND: lambda ns, name: accountkeys.reconcile(rt, ns, name),
        rolebindings.BINDING: lambda ns, name: rolebindings.reconcile(rt, ns, name),
        rolebindings.ROLE: lambda ns, name: rolebindings.role_reconcile(rt, ns, name),
        identityproviders.KIND: lambda ns, name: identityproviders.reconcile(rt, ns, name),
    }
    rt.queue = workqueue.WorkQueue(
        reconcilers, WORKERS, rt.activity.wait_active, lambda: client.available(rt.kube), rt.metrics
    )
    metrics.serve(rt.metrics, rt.metrics_address)
    watched = _informers(rt)
    for each in watched:
        each.start()
    # What the operator keeps is compared with what is there, never with nothing: those informers are
    # full before anything runs. The RoleBinding informer (ten thousand bindings take seconds to list)
    # fills meanwhile, beside Kopf's own listing: the grants engine is built only once both are full,
    # and everything that reads grants waits for that (rolebindings.changed).
    for each in watched:
        if each not in rt.rolebindings.informers:
            await asyncio.to_thread(each.synced.wait)
    await keeper.load_keys(rt)
    rt.revocations = await keeper.load_revocations(rt)
    logger.info("Loaded %d revocations", len(rt.revocations.current))
    rt.tasks = [
        asyncio.create_task(rt.queue.run()),
        asyncio.create_task(_sweep_pending(rt)),
        asyncio.create_task(publisher.publish_forever(rt)),
        asyncio.create_task(rotation.rotate_forever(rt)),
        asyncio.create_task(keeper.keep_forever(rt)),
        asyncio.create_task(
            rt.activity.watch(log, rt.hub.indexed.is_set, lambda: os.kill(os.getpid(), signal.SIGTERM))
        ),
    ]
    rt.informers = watched


async def _sweep_pending(rt: runtime.Runtime) -> None:
    """Look again at objects whose own write never showed in the watch (a lost event), once it stood its time."""
    while True:
        await asyncio.sleep(1.0)
        for ns, name in rt.tokens_written.expired():
            rt.queue.add(serviceaccounts.key(ns, name))
        for ns, name in rt.key_secrets_written.expired():
            rt.queue.add(accountkeys.key(ns, name))
        rt.queue.add_all(rt.statuses_written.expired())
        rt.queue.add_all(rt.finalizers_written.expired())
        if rt.keys_written.expired():
            rt.keeper.touch()


async def operator_cleanup(memo: runtime.Runtime, **_: Any) -> None:
    for task in getattr(memo, "tasks", []):
        task.cancel()
    for task in getattr(memo, "tasks", []):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for each in getattr(memo, "informers", []):
        each.stop()
    if getattr(memo, "http", None) is not None:
        await memo.http.close()


async def trust_bundle_namespaces_index(name: str, uid: str | None, meta: kopf.Meta, **_: Any) -> Any:
    """Namespaces that opted in to a trust bundle (name -> uid, for events about them); a namespace
    being deleted accepts no new objects, so it leaves at once."""
    return {} if meta.get("deletionTimestamp") else {name: uid or ""}


# --- one event handler per resource: feed the engine, wake the publisher, queue the object --------------


def _started(rt: runtime.Runtime) -> None:
    """Handlers run only once every index is full: from now on, bundles may be published."""
    rt.hub.indexed.set()


async def serviceaccount_event(
    memo: runtime.Runtime, namespace: str | None, name: str | None, meta: kopf.Meta, type: str | None, **_: Any
) -> None:
    _started(memo)
    ns, nm = namespace or "", name or ""
    if type == "DELETED":
        serviceaccounts.forget(memo, ns, nm)
    ref, version, gone = serviceaccounts.key(ns, nm), meta.get("resourceVersion"), type == "DELETED"
    echo = memo.statuses_written.seen(ref, version, gone)
    echo = memo.finalizers_written.seen(ref, version, gone) or echo  # both are told of every version
    rolebindings.account_changed(memo, ns, nm)
    keys = accountkeys.keys_of_account(memo, ns, nm)
    publisher.account_event(memo, (ns, nm), keyed=bool(keys))
    if not echo:  # our own status or finalizer write coming back has nothing new to look at
        memo.queue.add(ref)
        memo.queue.add_all(keys)  # a key waiting for its account


async def serviceaccountkey_event(
    memo: runtime.Runtime, namespace: str | None, name: str | None, meta: kopf.Meta, **_: Any
) -> None:
    _started(memo)
    memo.hub.touch()
    if not memo.statuses_written.seen((accountkeys.KIND, namespace or "", name or ""), meta.get("resourceVersion")):
        memo.queue.add(accountkeys.key(namespace or "", name or ""))


async def role_event(memo: runtime.Runtime, namespace: str | None, name: str | None, meta: kopf.Meta, **_: Any) -> None:
    _started(memo)
    echo = memo.statuses_written.seen((rolebindings.ROLE, namespace or "", name or ""), meta.get("resourceVersion"))
    rolebindings.role_changed(memo, namespace, name, look=not echo)


async def namespace_event(memo: runtime.Runtime, name: str | None, **_: Any) -> None:
    _started(memo)
    rolebindings.namespace_changed(memo, name)
    memo.hub.touch()


async def identityprovider_event(memo: runtime.Runtime, name: str | None, meta: kopf.Meta, **_: Any) -> None:
    _started(memo)
    if not memo.statuses_written.seen((identityproviders.KIND, "", name or ""), meta.get("resourceVersion")):
        memo.queue.add(identityproviders.key(name or ""))


def register(registry: kopf.OperatorRegistry) -> None:
    """Register every handler and index on ``registry``."""
    group = (meta.GROUP, meta.VERSION)
    sa, sak = (*group, sa_api.INFO.plural), (*group, sak_api.INFO.plural)
    role = (*group, role_api.INFO.plural)
    idp = (*group, idp_api.INFO.plural)
    opted_in = {core_settings.TRUST_BUNDLE_LABEL: core_settings.TRUST_BUNDLE_LABEL_VALUE}
    kopf.on.login(registry=registry)(kopf.login_via_client)  # a custom registry gets no default login
    kopf.on.startup(registry=registry)(operator_startup)
    kopf.on.cleanup(registry=registry)(operator_cleanup)

    managed: dict[str, Any] = {meta.MANAGED_BY_LABEL: meta.MANAGED_BY_VALUE}
    token_labels = {**managed, manifests.TOKEN_FOR_LABEL: kopf.PRESENT}
    key_labels = {**managed, core_keys.KEY_FOR_LABEL: kopf.PRESENT}
    indexes = (
        (sa, serviceaccounts.serviceaccounts_index, None, "accounts"),
        (sak, accountkeys.serviceaccountkeys_index, None, "account_keys"),
        (("v1", "secrets"), serviceaccounts.token_secrets_index, token_labels, "token_secrets"),
        (("v1", "secrets"), accountkeys.key_secrets_index, key_labels, "key_secrets"),
        (role, rolebindings.roles_index, None, "roles"),
        (("v1", "namespaces"), rolebindings.namespace_services_index, None, "namespace_services"),
        (("v1", "namespaces"), trust_bundle_namespaces_index, opted_in, "bundle_namespaces"),
        (idp, identityproviders.identityproviders_index, None, "providers"),
    )
    for resource, fn, labels, name in indexes:
        kopf.index(*resource, labels=labels, registry=registry, id=f"{name}_index")(fn)
    events = (
        (sa, serviceaccount_event, None, QUEUE),
        (sak, serviceaccountkey_event, None, QUEUE),
        (role, role_event, None, QUEUE),
        (("v1", "namespaces"), namespace_event, None, QUEUE),
        (idp, identityprovider_event, None, QUEUE),
        (("v1", "secrets"), serviceaccounts.token_secret_changed, token_labels, "token-secret"),
        (("v1", "secrets"), accountkeys.key_secret_changed, key_labels, "key-secret"),
    )
    for resource, handler, labels, handler_id in events:
        kopf.on.event(*resource, labels=labels, registry=registry, id=handler_id)(handler)
