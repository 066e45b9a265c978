"""The operator's run-time state: one typed object, Kopf's memo.

Kopf hands each object's handlers a copy of the memo; :meth:`Runtime.__copy__` returns the object
itself, so every handler, reconcile and background task shares exactly one state (an attribute set
later is seen everywhere) and Kopf keeps no per-object copy of it (at 20,000 objects, copies of a
memo cost megabytes). The attributes are set once, at start-up (:mod:`tessera.operator.handlers`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
import kopf

from tessera.api import identityprovider as idp_api
from tessera.api import meta
from tessera.api import role as role_api
from tessera.api import serviceaccount as sa_api
from tessera.core import accountkeys, assignments, settings, status, tokens
from tessera.core import bundles as core_bundles
from tessera.kube import client, informer, issuerkeys
from tessera.operator import metrics, state, workqueue

Key = tuple[str, str]  # (namespace, name)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True, slots=True)
class BindingEntry:
    """What the operator keeps of a RoleBinding: its facts, its stored conditions (for transition times,
    and the Ready one to decide on Warnings) and a digest of its stored status (the whole status, with
    up to 5,000 assignments, is not kept). Ten thousand bindings are kept at once, so the conditions
    stay as their compact JSON text and are parsed only when a reconcile asks for them: as models they
    took about 2 KiB a binding."""

    facts: assignments.BindingFacts
    stored_conditions: str  # JSON list, as validated when the binding was parsed
    status_digest: str
    uid: str
    version: str  # resourceVersion: tells the echo of the operator's own status write

    @property
    def conditions(self) -> tuple[meta.Condition, ...]:
        return tuple(meta.Condition.model_validate(c) for c in json.loads(self.stored_conditions))

    @property
    def ready(self) -> dict[str, Any]:
        """The stored Ready condition (JSON form), {} when there is none."""
        return status.ready_condition({"conditions": json.loads(self.stored_conditions)})


@dataclasses.dataclass(frozen=True)
class Indexes:
    """Kopf's indexes, by what they hold; filled before any handler runs."""

    accounts: kopf.Index[Key, sa_api.ServiceAccount]
    account_keys: kopf.Index[Key, accountkeys.KeyEntry]
    token_secrets: kopf.Index[Key, tokens.ObservedToken | None]
    key_secrets: kopf.Index[Key, accountkeys.KeySecret]
    roles: kopf.Index[Key, role_api.Role]
    namespace_services: kopf.Index[str, frozenset[str]]
    bundle_namespaces: kopf.Index[str, str]
    providers: kopf.Index[str, idp_api.IdentityProvider]

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> Indexes:
        return cls(**{field.name: kwargs[f"{field.name}_index"] for field in dataclasses.fields(cls)})


def first(index: kopf.Index[Any, T], key: Any) -> T | None:
    """The one value an index holds for ``key`` (each of ours holds one per object), or None."""
    return next(iter(index.get(key, [])), None)


class Runtime:
    """Everything the operator shares; see the module docstring."""

    cfg: settings.Settings
    kube: client.Clients
    http: aiohttp.ClientSession
    metrics: metrics.Metrics
    indexes: Indexes
    queue: workqueue.WorkQueue
    hub: state.Hub
    issuer_keys: state.Keys
    grants: state.GrantsState
    revocations: state.RevocationStore
    activity: state.Activity
    keeper: state.Signal  # wakes the task that keeps the operator namespace's objects whole
    rolebindings: informer.Spread[BindingEntry]  # every RoleBinding, as facts (an informer: see handlers)
    binding_keys: set[Key]  # the RoleBindings the grants engine was told about
    bundles: informer.Informer[str]  # every trust bundle ConfigMap: (namespace, name) -> digest of its data
    issuer_secret: informer.Informer[issuerkeys.Stored]  # the issuer key Secret
    keys_written: state.Pending[str, None]  # our last write of the key Secret, until the informer shows it
    jwks_configmap: informer.Informer[dict[str, str]]  # the issuer JWKS ConfigMap: its data
    revocations_configmap: informer.Informer[dict[str, str]]  # the stored revocations: data
    tokens_written: state.Pending[Key, tokens.ObservedToken | None]
    key_secrets_written: state.Pending[Key, accountkeys.KeySecret]
    statuses_written: state.Pending[workqueue.Key, dict[str, Any]]
    finalizers_written: state.Pending[workqueue.Key, None]  # our finalizer writes, until the watch shows them
    tasks: list[asyncio.Task[None]]
    informers: list[informer.Informer[Any]]
    issuer_keys_damage: str  # "" while the issuer key Secret is whole; else how it was damaged
    jwks_data: dict[str, str] | None  # the JWKS ConfigMap's data as last written
    metrics_address: str  # host:port of /metrics; "" serves none
    status_writes: int  # statuses written so far (the start-up sync reports how many it wrote)
    provider_failures: dict[str, int]  # IdentityProvider -> fetches failed in a row
    bundle_accounts: dict[Key, core_bundles.Account]  # accounts shown in bundles by themselves, as at their last event

    watch_namespaces: list[str]  # the namespaces served; empty: all

    def __init__(self, cfg: settings.Settings, metrics_address: str = "", watch_namespaces: Sequence[str] = ()) -> None:
        self.cfg = cfg
        self.metrics_address = metrics_address
        self.watch_namespaces = list(watch_namespaces)
        self.binding_keys = set()
        self.informers = []
        self.status_writes = 0
        self.provider_failures = {}
        self.bundle_accounts = {}
        self.issuer_keys_damage = ""
        self.jwks_data = None
        self.tokens_written = state.Pending()
        self.key_secrets_written = state.Pending()
        self.statuses_written = state.Pending()
        self.finalizers_written = state.Pending()
        self.keys_written = state.Pending()
        self.tasks = []

    def __copy__(self) -> Runtime:
        return self
