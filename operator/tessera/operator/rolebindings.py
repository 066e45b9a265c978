"""Roles and RoleBindings: member assignments on each binding, the services summary on each account,
grants in each namespace's trust bundle, all kept current incrementally.

Kopf indexes hold what the computation needs of Roles, RoleBindings, namespaces and accounts. The
first event after start-up (Kopf runs no handler before every index is full) builds the
:class:`~tessera.core.grants.Engine` from them and puts every binding and account on the work queue,
whose reconciles compare each stored status with the computation and write only what differs
(:func:`reconcile`; an account's summary is written with its token status, in one write). Every
later event feeds one change to the engine, which names exactly the bindings, principals and
namespaces whose result changed: those bindings and accounts are queued, those bundles re-rendered.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf
import pydantic

from tessera import trustbundle
from tessera.api import role as role_api
from tessera.api import rolebinding as rb_api
from tessera.api import serviceaccount as sa_api
from tessera.core import assignments, clock, grants, status
from tessera.kube import objects
from tessera.operator import allocator, runtime, serviceaccounts, statuses, workqueue

BINDING, ROLE = rb_api.INFO.kind, role_api.INFO.kind
logger = logging.getLogger("tessera.grants")


def binding_key(namespace: str, name: str) -> workqueue.Key:
    return (BINDING, namespace, name)


# --- indexes --------------------------------------------------------------------------------------------


async def roles_index(body: kopf.Body, **_: Any) -> Any:
    try:
        role = role_api.Role.parse(body)
    except pydantic.ValidationError:
        return {}
    return {(role.namespace, role.name): role}


def binding_entry(body: dict[str, Any]) -> runtime.BindingEntry | None:
    """What the RoleBinding informer keeps of a binding: its facts and a digest of its stored status (not
    the status itself: it lists up to 5,000 assignments, and ten thousand of them would be kept for a
    comparison). Runs in the informer's thread; None leaves a binding that does not parse out."""
    stored = dict(body.get("status") or {})
    try:
        binding = rb_api.RoleBinding.parse({**body, "status": {"conditions": stored.get("conditions") or []}})
    except pydantic.ValidationError:
        return None
    return runtime.BindingEntry(
        assignments.BindingFacts.of(binding),
        json.dumps([c.wire() for c in binding.status.conditions], separators=(",", ":")),
        status.digest(stored),
        binding.metadata.uid or "",
        binding.metadata.resource_version or "",
    )


async def namespace_services_index(name: str, annotations: Mapping[str, str], **_: Any) -> Any:
    services = assignments.parse_services_annotation(annotations.get(assignments.SERVICES_ANNOTATION))
    return {name: services} if services else {}


# --- the engine, fed by events ----------------------------------------------------------------------------


def _state(rt: runtime.Runtime, bindings: Mapping[runtime.Key, runtime.BindingEntry]) -> grants.Inputs:
    ix = rt.indexes
    accounts = {key: sa for key in ix.accounts if (sa := runtime.first(ix.accounts, key)) is not None}
    return grants.Inputs(
        roles={key: assignments.RoleFacts.of(role) for key in ix.roles if (role := runtime.first(ix.roles, key))},
        bindings={key: entry.facts for key, entry in bindings.items()},
        namespace_services={ns: s for ns in ix.namespace_services if (s := runtime.first(ix.namespace_services, ns))},
        accounts=frozenset(key for key, sa in accounts.items() if not sa.spec.disabled),
        disabled=frozenset(key for key, sa in accounts.items() if sa.spec.disabled),
    )


def _queue(rt: runtime.Runtime, delta: grants.Delta) -> None:
    """Queue the bindings and accounts ``delta`` names; wake the publisher for the bundles it names."""
    rt.queue.add_all(binding_key(*key) for key in delta.bindings)
    for principal in delta.principals | delta.tokens:
        account = sa_api.parse_subject(principal)  # None for users: they have no resource
        if account is not None:
            rt.queue.add(serviceaccounts.key(*account))
    if delta.grants:
        rt.hub.touch()


def changed(rt: runtime.Runtime, change: Callable[[grants.Engine], grants.Delta]) -> None:
    """Apply one change to the engine; before it is built, try to build it (once Kopf's indexes and the
    RoleBinding informer are both full: a change meanwhile is part of what it is built from)."""
    state = rt.grants
    if state.engine is None:
        if rt.hub.indexed.is_set() and rt.rolebindings.synced():
            _build(rt)
        return
    _queue(rt, change(state.engine))


def _build(rt: runtime.Runtime) -> None:
    """Build the engine from every index and put every binding and account on the queue (the start-up sync)."""
    state, started = rt.grants, time.monotonic()
    bindings = rt.rolebindings.snapshot()
    rt.binding_keys = set(bindings)
    state.engine = grants.Engine(_state(rt, bindings))
    everything = grants.Delta(
        bindings=frozenset(bindings),
        principals=frozenset(sa_api.subject_urn(*key) for key in rt.indexes.accounts),
        grants=frozenset(state.engine.result.grants),
    )
    logger.info(
        "Computed the assignments of %d RoleBindings in %.2fs",
        len(state.engine.result.bindings), time.monotonic() - started,
    )  # fmt: skip
    state.built.set()
    _queue(rt, everything)
    report = _report_sync(rt, started, len(everything.bindings), len(everything.principals))
    rt.tasks.append(asyncio.create_task(report))


async def _report_sync(rt: runtime.Runtime, started: float, bindings: int, principals: int) -> None:
    """Log once the statuses queued at start-up are all compared (and written where they differed)."""
    before = rt.status_writes
    await rt.queue.drained()
    allocator.give_back()  # the start-up burst is over: its freed heap need not stay resident
    logger.info(
        "Start-up sync done in %.2fs: compared %d RoleBinding and %d account statuses, wrote %d",
        time.monotonic() - started, bindings, principals, rt.status_writes - before,
    )  # fmt: skip


def _key(namespace: str | None, name: str | None) -> runtime.Key:
    return (namespace or "", name or "")


def role_changed(rt: runtime.Runtime, namespace: str | None, name: str | None, look: bool = True) -> None:
    key = _key(namespace, name)
    role = runtime.first(rt.indexes.roles, key)
    changed(rt, lambda e: e.set_role(key, assignments.RoleFacts.of(role) if role else None))
    if look:
        rt.queue.add((ROLE, *key))


def _set_binding(key: runtime.Key, facts: assignments.BindingFacts | None, engine: grants.Engine) -> grants.Delta:
    return engine.set_binding(key, facts)


def binding_event(rt: runtime.Runtime, key: runtime.Key | None) -> None:
    """From the RoleBinding informer (on the event loop): one binding changed, or (None) everything may
    have, after a (re)list."""
    keys = [key] if key is not None else sorted(set(rt.rolebindings.snapshot()) | rt.binding_keys)
    for each in keys:
        entry = rt.rolebindings.get(*each)
        echo = entry is not None and rt.statuses_written.seen((BINDING, *each), entry.version)
        if entry is None:
            rt.binding_keys.discard(each)
            rt.statuses_written.forget((BINDING, *each))
            rt.queue.forget(binding_key(*each))
        else:
            rt.binding_keys.add(each)
        facts = entry.facts if entry is not None else None
        changed(rt, functools.partial(_set_binding, each, facts))
        if entry is not None and not echo:  # any event but our own write: compare its status (a repair)
            rt.queue.add(binding_key(*each))


def namespace_changed(rt: runtime.Runtime, name: str | None) -> None:
    services = runtime.first(rt.indexes.namespace_services, name) or frozenset()
    changed(rt, lambda e: e.set_namespace_services(name or "", services))


def account_changed(rt: runtime.Runtime, namespace: str | None, name: str | None) -> None:
    key = _key(namespace, name)
    sa = runtime.first(rt.indexes.accounts, key)
    exists, enabled = sa is not None, sa is not None and not sa.spec.disabled
    changed(rt, lambda e: e.set_account(key, exists, enabled))


# --- reconciles -------------------------------------------------------------------------------------------


async def reconcile(rt: runtime.Runtime, namespace: str, name: str) -> float | None:
    """Write a binding's status where it differs from the computation, with a Warning per new problem."""
    await rt.grants.built.wait()
    key = (namespace, name)
    entry, engine = rt.rolebindings.get(namespace, name), rt.grants.engine
    result = engine.result.bindings.get(key) if engine is not None else None
    if entry is None or result is None:
        return None
    pending, mine = rt.statuses_written.get((BINDING, namespace, name))
    digest, ready = (mine["digest"], mine["ready"]) if pending and mine else (entry.status_digest, entry.ready)
    new = assignments.binding_status(entry.conditions, result, clock.utcnow())
    if status.digest(new) == digest:
        return None
    version = await objects.patch_status(rt.kube, rb_api.INFO.plural, namespace, name, new)
    if version is None:
        return None
    rt.statuses_written.wrote(
        (BINDING, namespace, name), version, {"digest": status.digest(new), "ready": status.ready_condition(new)}
    )
    ref = statuses.Ref(rb_api.INFO, namespace, name, entry.uid, result.generation)
    await statuses.warn(rt, ref, [ready], result.warnings)
    rt.status_writes += 1
    logger.info(
        "[%s/%s] Updated RoleBinding: %s (%d assignments)", namespace, name, result.reason, len(result.assignments)
    )
    return None


async def role_reconcile(rt: runtime.Runtime, namespace: str, name: str) -> float | None:
    """A Role's status, as :func:`assignments.role_status` decides it."""
    role = runtime.first(rt.indexes.roles, (namespace, name))
    if role is None:
        return None
    new = assignments.role_status(role, clock.utcnow())
    await statuses.write(rt, role_api.INFO, role, statuses.stored(rt, ROLE, namespace, name, role.status.wire()), new)
    return None


# --- what the bundles read --------------------------------------------------------------------------------


def grants_version(rt: runtime.Runtime, namespace: str) -> int:
    engine = rt.grants.engine
    return engine.grants_version(namespace) if engine else -1


def bundle_grants(rt: runtime.Runtime, namespace: str) -> dict[str, trustbundle.Grant]:
    """The grants of one namespace, as its trust bundle carries them (principal -> permissions, services)."""
    engine = rt.grants.engine
    given: Mapping[str, grants.Grant] = engine.result.grants.get(namespace, {}) if engine else {}
    return {p: trustbundle.Grant(tuple(g.permissions), tuple(g.services)) for p, g in sorted(given.items())}
