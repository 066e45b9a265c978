"""ServiceAccountKeys: register a supplied public key, or generate a pair into an owned Secret.

The private key of a generated pair is written only into the key's Secret; the status carries the
public half, and the trust bundle takes registered keys from an index over the resources. The
Secret is watched: when it is deleted or holds another key, the key leaves every bundle and its
status says why (:mod:`tessera.core.accountkeys`). Bad input becomes Ready=False with one Warning
per change; a key whose account appears later is looked at again when the account does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
import pydantic

from tessera import errors
from tessera.api import serviceaccountkey as sak_api
from tessera.core import accountkeys, clock
from tessera.crypto import keys
from tessera.kube import objects
from tessera.operator import runtime, statuses, workqueue

KIND = sak_api.INFO.kind
logger = logging.getLogger("tessera.keys")


def key(namespace: str, name: str) -> workqueue.Key:
    return (KIND, namespace, name)


async def serviceaccountkeys_index(body: kopf.Body, **_: Any) -> Any:
    """(namespace, name) -> the key, and the key trust bundles may hold (only while it is Ready)."""
    try:
        sak = sak_api.ServiceAccountKey.parse(body)
    except pydantic.ValidationError:
        return {}
    return {(sak.namespace, sak.name): accountkeys.KeyEntry.of(sak)}


async def key_secrets_index(namespace: str | None, labels: Mapping[str, str], body: kopf.Body, **_: Any) -> Any:
    """(namespace, key) -> which private key its Secret holds (its kid; never the key itself)."""
    return {(namespace, labels[accountkeys.KEY_FOR_LABEL]): accountkeys.key_secret_facts(body)}


async def key_secret_changed(
    memo: runtime.Runtime, namespace: str | None, labels: Mapping[str, str], meta: kopf.Meta, type: str | None, **_: Any
) -> None:
    """A generated key's Secret changed or went: look at its key."""
    ref = (namespace or "", labels[accountkeys.KEY_FOR_LABEL])
    if not memo.key_secrets_written.seen(ref, meta.get("resourceVersion"), gone=type == "DELETED"):
        memo.queue.add(key(*ref))


def keys_of_account(rt: runtime.Runtime, namespace: str, account: str) -> list[workqueue.Key]:
    """The queue keys of the ServiceAccountKeys of an account (looked at when the account comes or goes)."""
    return [
        key(ns, name)
        for (ns, name), store in rt.indexes.account_keys.items()
        for entry in store
        if ns == namespace and entry.key.spec.service_account_name == account
    ]


def _secret(rt: runtime.Runtime, ref: runtime.Key) -> accountkeys.KeySecret | None:
    pending, written = rt.key_secrets_written.get(ref)
    return written if pending else runtime.first(rt.indexes.key_secrets, ref)


async def _generated_public(rt: runtime.Runtime, sak: sak_api.ServiceAccountKey) -> keys.PublicKey:
    """The public half of the key's pair: from status when known, else from (or into) its Secret."""
    if sak.status.public_key:
        return keys.load_public_pem(sak.status.public_key)
    assert sak.spec.generate is not None
    manifest = accountkeys.build_key_secret(sak, keys.generate(sak.spec.generate.algorithm))
    stored = await objects.create_secret_if_absent(rt.kube, manifest)  # a pair from a previous attempt wins
    if not objects.is_ours(stored):
        raise errors.Conflict(f"Secret {sak.namespace}/{accountkeys.key_secret_name(sak)} exists and is not Tessera's")
    facts = accountkeys.key_secret_facts(stored)
    rt.key_secrets_written.wrote((sak.namespace, sak.name), objects.version_of(stored), facts)
    return keys.public_of(accountkeys.private_key_from_secret(stored))


async def reconcile(rt: runtime.Runtime, namespace: str, name: str) -> float | None:
    entry = runtime.first(rt.indexes.account_keys, (namespace, name))
    if entry is None:
        return None
    sak = entry.key
    now = clock.utcnow()
    exists = runtime.first(rt.indexes.accounts, (namespace, sak.spec.service_account_name)) is not None
    generated = None
    try:
        if sak.spec.generate is not None and exists and not sak.spec.disabled:
            generated = await _generated_public(rt, sak)
        secret = _secret(rt, (namespace, name)) if accountkeys.registered_kid(sak) else None
        decided = accountkeys.plan(sak, exists, generated, now, secret)
    except errors.Conflict as exc:
        decided = accountkeys.Reject("SecretNameTaken", str(exc))
    except errors.KeyMaterialError as exc:
        decided = accountkeys.Reject(accountkeys.INVALID, f"the generated key's Secret is unreadable: {exc}")
    current = statuses.stored(rt, KIND, namespace, name, sak.status.wire())
    new = accountkeys.status(sak, decided, now)
    findings = [(decided.reason, decided.message)] if isinstance(decided, accountkeys.Reject) else []
    if await statuses.write(rt, sak_api.INFO, sak, current, new, findings):
        if decided.reason in (accountkeys.PRIVATE_KEY_LOST, accountkeys.PRIVATE_KEY_REPLACED):
            rt.metrics.healed.labels("generated_key_lost").inc()
        level = logging.WARNING if isinstance(decided, accountkeys.Reject) else logging.INFO
        logger.log(level, "[%s/%s] %s: %s", namespace, name, decided.reason, decided.message)
    expires = sak.spec.expires_at
    return (expires - now).total_seconds() + 0.01 if expires is not None and expires > now else None
