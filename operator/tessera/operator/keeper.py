"""The objects in the operator's own namespace, kept whole: the issuer key Secret, the issuer JWKS
ConfigMap and the stored revocations.

- The revocations ConfigMap, deleted or damaged, is written again from memory, merged with whatever
  it still holds (a revocation is never lost). At start, if it is missing or unreadable, the
  revocations are recovered from the trust bundles, which publish every one in force.
- The JWKS ConfigMap, deleted or changed, is written again from the key set in use.
- The issuer key Secret (watched by name), deleted or made unreadable while the operator runs, is
  written again from the keys in memory: the same keys, so the same identity (every token and bundle
  stays valid); a key set someone else wrote (a peer's rotation, a restore from a backup) is adopted. A
  new key set is minted only on a first start: when the Secret is missing at start but the JWKS
  ConfigMap still lists keys, an identity exists whose private keys nobody holds any more. Minting
  silently would make every token in use unverifiable the moment the bundles change, so the
  operator signs nothing instead, keeps publishing the last public keys (tokens already out keep
  working until they expire), says so in every account that needs a token (``IssuerKeysMissing``),
  in a Warning and in ``tessera_issuer_keys_missing``; restoring the Secret from a backup resumes
  signing, and deleting the JWKS ConfigMap is the explicit decision to start over with new keys.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tessera import errors
from tessera.core import clock, issuer, manifests, revocations, settings
from tessera.kube import issuerkeys, objects
from tessera.operator import runtime, serviceaccounts, state

logger = logging.getLogger("tessera.issuer")

JWKS_KEY = "jwks.json"


def stored_data(rt: runtime.Runtime, which: str) -> dict[str, str] | None:
    """The data of one of the operator namespace's ConfigMaps as its informer last saw it (None: absent)."""
    cache = rt.jwks_configmap if which == settings.ISSUER_JWKS_CONFIGMAP else rt.revocations_configmap
    return cache.get(rt.cfg.namespace, which)


def _stored_jwks(rt: runtime.Runtime) -> dict[str, Any] | None:
    text = (stored_data(rt, settings.ISSUER_JWKS_CONFIGMAP) or {}).get(JWKS_KEY)
    try:
        document = json.loads(text) if text else None
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _stored_revocations(rt: runtime.Runtime) -> revocations.Revocations | None:
    """The stored revocations; None when the ConfigMap is missing or unreadable."""
    data = stored_data(rt, settings.REVOCATIONS_CONFIGMAP)
    if data is None:
        return None
    text = data.get(manifests.REVOCATIONS_KEY)
    try:
        return revocations.loads(text) if text else None
    except errors.ConfigError:
        return None


# --- at start --------------------------------------------------------------------------------------------

KEYS = settings.ISSUER_KEYS_SECRET  # the Pending key of the key Secret


def stored_keys(rt: runtime.Runtime) -> issuerkeys.Stored | None:
    """The key Secret as its informer last saw it (None: absent); a version of our own write it shows
    ends that write's pending state."""
    stored = rt.issuer_secret.get(rt.cfg.namespace, settings.ISSUER_KEYS_SECRET)
    if stored is not None:
        rt.keys_written.seen(KEYS, stored.version)
    return stored


async def load_keys(rt: runtime.Runtime) -> None:
    """The key set to sign with: the stored one; a new one on a first start; none when it was lost."""
    cfg = rt.cfg
    stored = stored_keys(rt)
    if stored is not None and stored.keyset is not None:
        await adopt(rt, stored.keyset)
        return
    published = _stored_jwks(rt)
    if stored is None and not issuer.lost_keys(published):
        await _create(rt, issuer.initial(cfg.algorithm, clock.utcnow()))
        return
    if stored is not None:
        logger.error("The issuer key Secret is unreadable (%s)", stored.problem)
    rt.issuer_keys.lose(published or {"keys": []})
    logger.error("Signing nothing: %s", issuer.missing_message(cfg.namespace, rt.issuer_keys.lost))


async def _create(rt: runtime.Runtime, keyset: issuer.KeySet) -> None:
    stored = await issuerkeys.create(rt.kube, rt.cfg, keyset)  # a racing peer's set, if it won
    if stored.keyset is None:
        raise errors.KeyMaterialError(stored.problem)
    rt.keys_written.wrote(KEYS, stored.version, None)
    await adopt(rt, stored.keyset)


async def load_revocations(rt: runtime.Runtime) -> state.RevocationStore:
    """The stored revocations, or, when the ConfigMap is missing or unreadable, those the trust bundles
    publish (kept until every token they may cover has expired): never fewer than are in force."""
    stored = _stored_revocations(rt)
    store = state.RevocationStore(rt.kube, rt.cfg, rt.hub, dict(stored or {}), rt.metrics)
    if stored is None:
        recovered = await _from_bundles(rt)
        store.current = revocations.pruned(recovered, clock.utcnow())
        await store.heal(None, clock.utcnow())
        rt.metrics.healed.labels("revocations").inc()
        logger.warning(
            "The stored revocations were missing or unreadable: recovered %d from the trust bundles and stored them",
            len(store.current),
        )
    return store


async def _from_bundles(rt: runtime.Runtime) -> dict[str, revocations.Revocation]:
    found: dict[str, revocations.Revocation] = {}
    for data in await objects.list_bundle_data(rt.kube, settings.TRUST_BUNDLE_CONFIGMAP):
        try:
            document = json.loads(data.get("bundle.json") or "{}")
        except ValueError:
            continue
        entries = document.get("revocations") if isinstance(document, dict) else None
        found = revocations.merged(found, revocations.from_bundle(entries, rt.cfg.max_token_ttl, rt.cfg.clock_leeway))
    return found


# --- at run time -----------------------------------------------------------------------------------------


async def adopt(rt: runtime.Runtime, keyset: issuer.KeySet) -> None:
    """Make ``keyset`` the one in use and wake whoever depends on it (the publisher, the JWKS, and every
    account when signing resumes or a key changed)."""
    was_lost = bool(rt.issuer_keys.lost)
    if not rt.issuer_keys.replace(keyset):
        return
    rt.hub.touch()
    rt.keeper.touch()
    logger.info("Loaded issuer keys %s", [k.kid for k in keyset])
    if was_lost:
        logger.warning("Issuer keys are back: signing resumes")
    rt.queue.add_all(serviceaccounts.key(*ref) for ref in rt.indexes.accounts)


async def keep(rt: runtime.Runtime) -> float:
    """One round: repair whatever of the three is missing or damaged. Returns the longest pause."""
    await rt.activity.wait_active()  # a replica paused by peering writes nothing
    await _keep_keys(rt)
    await _keep_jwks(rt)
    if await rt.revocations.heal(_stored_revocations(rt), clock.utcnow()):
        rt.metrics.healed.labels("revocations").inc()
        logger.warning("Restored the stored revocations in %s/%s", rt.cfg.namespace, settings.REVOCATIONS_CONFIGMAP)
    _report(rt)
    return state.IDLE_SECONDS


async def _keep_keys(rt: runtime.Runtime) -> None:
    """Adopt a key set someone else wrote (a peer's rotation, a restore from a backup); write the keys in
    memory over a Secret that is gone or unreadable."""
    stored, keyset = stored_keys(rt), rt.issuer_keys.current
    pending, _ = rt.keys_written.get(KEYS)
    if pending:
        return  # our own write is not visible yet: what the informer shows is older
    if stored is not None and stored.keyset is not None:
        await adopt(rt, stored.keyset)
        return
    if not keyset:
        return  # lost, and nothing in memory to restore it from (see _keep_jwks)
    if stored is None:
        written = await issuerkeys.create(rt.kube, rt.cfg, keyset)
        damage = "deleted"
    else:
        written = issuerkeys.Stored(await issuerkeys.replace(rt.kube, rt.cfg, keyset, stored.version), keyset)
        damage = f"unreadable ({stored.problem})"
    rt.keys_written.wrote(KEYS, written.version, None)
    rt.metrics.healed.labels("issuer_keys").inc()
    message = f"the issuer key Secret was {damage}; restored it with the keys in use {[k.kid for k in keyset]}"
    logger.warning("Restored the issuer keys: %s", message)
    involved = objects.involved("v1", "Secret", rt.cfg.namespace, settings.ISSUER_KEYS_SECRET, None)
    await objects.post_event(rt.kube, involved, rt.cfg.namespace, "IssuerKeysRestored", message, kind="Normal")


async def _keep_jwks(rt: runtime.Runtime) -> None:
    cfg = rt.cfg
    if rt.issuer_keys.lost:
        if stored_data(rt, settings.ISSUER_JWKS_CONFIGMAP) is None:  # deleted: start over, as documented
            logger.warning("The JWKS ConfigMap was deleted while the issuer keys were lost: minting new keys")
            await _create(rt, issuer.initial(cfg.algorithm, clock.utcnow()))
        return
    if not rt.issuer_keys.current:
        return
    manifest = manifests.build_jwks_configmap(rt.issuer_keys.current, cfg)
    if stored_data(rt, settings.ISSUER_JWKS_CONFIGMAP) == manifest["data"]:
        rt.jwks_data = manifest["data"]
        return
    if await objects.ensure_configmap(rt.kube, manifest):
        if rt.jwks_data == manifest["data"]:  # it was published, and someone deleted or changed it
            rt.metrics.healed.labels("issuer_jwks").inc()
            logger.warning("Restored the issuer JWKS in %s/%s", cfg.namespace, settings.ISSUER_JWKS_CONFIGMAP)
        else:
            logger.info("Published the issuer JWKS in %s/%s", cfg.namespace, settings.ISSUER_JWKS_CONFIGMAP)
    rt.jwks_data = manifest["data"]


def _report(rt: runtime.Runtime) -> None:
    keyset = rt.issuer_keys.current
    rt.metrics.keys(keyset, bool(rt.issuer_keys.lost), issuer.next_rotation_event(keyset, rt.cfg) if keyset else None)
    rt.metrics.revocations.set(len(rt.revocations.current))


async def keep_forever(rt: runtime.Runtime) -> None:
    await state.forever("to keep the issuer keys, JWKS and revocations", logger, lambda: keep(rt), rt.keeper.wait)
