"""Roles and RoleBindings: member assignments on each binding, the services summary on each account,
grants in each namespace's trust bundle, all kept current incrementally.

Kopf indexes hold what the computation needs of Roles, RoleBindings, namespaces and accounts. The
first event after start-up (Kopf runs no handler before every index is full) builds the
:class:`~tessera.core.grants.Engine` from them and writes whatever differs from the stored statuses;
every later event feeds one change to the engine, which names exactly the bindings, principals and
namespaces whose result changed, and only those are compared and written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
import pydantic

from tessera import errors, trustbundle
from tessera.api import meta
from tessera.api import role as role_api
from tessera.api import rolebinding as rb_api
from tessera.api import serviceaccount as sa_api
from tessera.core import assignments, conditions, grants, status
from tessera.kube import objects

logger = logging.getLogger("tessera.grants")
Key = tuple[str, str]
Indexes = Mapping[str, kopf.Index[Any, Any]]


@dataclasses.dataclass(frozen=True)
class BindingEntry:
    facts: assignments.BindingFacts
    conditions: tuple[meta.Condition, ...]
    status: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class AccountEntry:
    enabled: bool
    summary: dict[str, Any]  # services and boundIn as stored in its status


class Grants:
    """The engine, built once every index is full; shared through the memo."""

    def __init__(self) -> None:
        self.engine: grants.Engine | None = None
        self.built = asyncio.Event()


def _first(index: kopf.Index[Any, Any], key: Any) -> Any:
    return next(iter(index.get(key, [])), None)


async def roles_index(body: kopf.Body, **_: Any) -> Any:
    try:
        role = role_api.Role.parse(body)
    except pydantic.ValidationError:
        return {}
    return {(role.namespace, role.name): assignments.RoleFacts.of(role)}


async def rolebindings_index(body: kopf.Body, **_: Any) -> Any:
    try:
        binding = rb_api.RoleBinding.parse(body)
    except pydantic.ValidationError:
        return {}
    stored = dict(body.get("status") or {})
    entry = BindingEntry(assignments.BindingFacts.of(binding), tuple(binding.status.conditions), stored)
    return {(binding.namespace, binding.name): entry}


async def namespace_services_index(name: str, annotations: Mapping[str, str], **_: Any) -> Any:
    services = assignments.parse_services_annotation(annotations.get(assignments.SERVICES_ANNOTATION))
    return {name: services} if services else {}


async def account_summaries_index(body: kopf.Body, **_: Any) -> Any:
    meta_ = body.get("metadata") or {}
    stored = body.get("status") or {}
    summary = {"services": stored.get("services"), "boundIn": stored.get("boundIn")}
    enabled = not (body.get("spec") or {}).get("disabled", False)
    return {(meta_.get("namespace"), meta_.get("name")): AccountEntry(enabled, summary)}


def _state(indexes: Indexes) -> grants.State:
    accounts = indexes["account_summaries_index"]
    return grants.State(
        roles={key: _first(indexes["roles_index"], key) for key in indexes["roles_index"]},
        bindings={key: _first(indexes["rolebindings_index"], key).facts for key in indexes["rolebindings_index"]},
        namespace_services={
            ns: _first(indexes["namespace_services_index"], ns) for ns in indexes["namespace_services_index"]
        },
        accounts=frozenset(key for key in accounts if _first(accounts, key).enabled),
        disabled=frozenset(key for key in accounts if not _first(accounts, key).enabled),
    )


def _everything(engine: grants.Engine, indexes: Indexes) -> grants.Delta:
    """After a start: compare every binding and account with what the computation says."""
    result = engine.result
    return grants.Delta(
        bindings=frozenset(result.bindings) | frozenset(indexes["rolebindings_index"]),
        principals=frozenset(result.principals)
        | frozenset(sa_api.subject_urn(ns, name) for ns, name in indexes["account_summaries_index"]),
        grants=frozenset(result.grants),
    )


async def _changed(memo: Any, indexes: Mapping[str, Any], change: Any) -> None:
    """Apply one change (a callable on the engine returning a Delta) and write what it altered."""
    hub: Grants = memo.grants
    first = hub.engine is None
    started = time.monotonic()
    if hub.engine is None:
        hub.engine = grants.Engine(_state(indexes))
        delta = _everything(hub.engine, indexes)
        logger.info(
            "Computed the assignments of %d RoleBindings in %.2fs",
            len(hub.engine.result.bindings),
            time.monotonic() - started,
        )
        hub.built.set()
    else:
        delta = change(hub.engine)
    if delta.grants:
        memo.hub.touch()
    try:
        written = await _write(memo, hub.engine, delta, indexes)
    except errors.KubeError as exc:
        raise kopf.TemporaryError(f"{exc}; will retry", delay=10) from exc
    if first:
        logger.info(
            "Start-up sync done in %.2fs: compared %d RoleBinding and %d account statuses, wrote %d",
            time.monotonic() - started,
            len(delta.bindings),
            len(delta.principals),
            written,
        )


async def _write(memo: Any, engine: grants.Engine, delta: grants.Delta, indexes: Indexes) -> int:
    """Write the statuses ``delta`` names where they differ from the stored ones; return how many were written."""
    now = datetime.datetime.now(datetime.UTC)
    jobs = [_write_binding(memo, engine, key, indexes, now) for key in delta.bindings]
    jobs += [_write_summary(memo, engine, key, indexes) for key in delta.principals]
    written = 0
    for batch in (jobs[i : i + 32] for i in range(0, len(jobs), 32)):
        written += sum(await asyncio.gather(*batch))
    return written


async def _write_binding(memo: Any, engine: grants.Engine, key: Key, indexes: Indexes, now: datetime.datetime) -> bool:
    result, entry = engine.result.bindings.get(key), _first(indexes["rolebindings_index"], key)
    if result is None or entry is None:
        return False
    new = assignments.binding_status(entry.conditions, result, now)
    if not status.needs_update(entry.status, new):
        return False
    await objects.patch_status(memo.kube, rb_api.INFO.plural, key[0], key[1], new)
    logger.info("Updated RoleBinding %s/%s: %s (%d assignments)", *key, result.reason, len(result.assignments))
    return True


async def _write_summary(memo: Any, engine: grants.Engine, principal: str, indexes: Indexes) -> bool:
    key = grants.account_of(principal)
    entry = _first(indexes["account_summaries_index"], key) if key else None
    if key is None or entry is None:
        return False  # a user (its summary lives in the bundles), or an account that is gone
    new = grants.summary_status(engine.result.principals.get(principal))
    if not status.needs_update({k: v or [] for k, v in entry.summary.items()}, new):
        return False
    await objects.patch_status(memo.kube, sa_api.INFO.plural, key[0], key[1], new)
    logger.info("Updated the services summary of ServiceAccount %s/%s: %s", *key, new["services"])
    return True


def _also(
    delta: grants.Delta,
    bindings: frozenset[Key] | set[Key] = frozenset(),
    principals: frozenset[str] | set[str] = frozenset(),
) -> grants.Delta:
    """``delta`` plus statuses to compare (and write only if they differ from the computation)."""
    return dataclasses.replace(
        delta, bindings=delta.bindings | frozenset(bindings), principals=delta.principals | frozenset(principals)
    )


def _key(namespace: str | None, name: str | None) -> Key:
    return (namespace or "", name or "")


async def role_changed(memo: Any, namespace: str | None, name: str | None, **kw: Any) -> None:
    key = _key(namespace, name)
    await _changed(memo, kw, lambda e: e.set_role(key, _first(kw["roles_index"], key)))


async def rolebinding_changed(memo: Any, namespace: str | None, name: str | None, **kw: Any) -> None:
    key = _key(namespace, name)
    entry = _first(kw["rolebindings_index"], key)
    # Also compare this binding's stored status with the computation (the Delta names only what the
    # computation changed): any event about it repairs a status someone else overwrote.
    await _changed(memo, kw, lambda e: _also(e.set_binding(key, entry.facts if entry else None), bindings={key}))


async def namespace_changed(memo: Any, name: str | None, **kw: Any) -> None:
    services = _first(kw["namespace_services_index"], name) or frozenset()
    await _changed(memo, kw, lambda e: e.set_namespace_services(name or "", services))


async def account_changed(memo: Any, namespace: str | None, name: str | None, **kw: Any) -> None:
    key = _key(namespace, name)
    entry = _first(kw["account_summaries_index"], key)
    exists, enabled = entry is not None, entry is not None and entry.enabled
    principal = sa_api.subject_urn(*key)  # and its stored summary, as for bindings
    await _changed(memo, kw, lambda e: _also(e.set_account(key, exists, enabled), principals={principal}))


async def role_reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """A Role the API server accepted is valid (its schema checks every permission): Ready=True."""
    role = role_api.Role.parse(body)
    now = datetime.datetime.now(datetime.UTC)
    gen = role.metadata.generation
    condition = conditions.ready(True, "Accepted", f"{len(role.spec.permissions)} permissions", gen)
    new = role_api.RoleStatus(
        conditions=conditions.set_condition(role.status.conditions, condition, now), observed_generation=gen
    ).wire()
    if status.needs_update(body.get("status"), new):
        patch.status.update(new)


def grants_version(memo: Any, namespace: str) -> int:
    engine: grants.Engine | None = memo.grants.engine
    return engine.grants_version(namespace) if engine else -1


def bundle_grants(memo: Any, namespace: str) -> dict[str, trustbundle.Grant]:
    """The grants of one namespace, as its trust bundle carries them (principal -> permissions, services)."""
    engine: grants.Engine | None = memo.grants.engine
    given: Mapping[str, grants.Grant] = engine.result.grants.get(namespace, {}) if engine else {}
    return {p: trustbundle.Grant(tuple(g.permissions), tuple(g.services)) for p, g in sorted(given.items())}
