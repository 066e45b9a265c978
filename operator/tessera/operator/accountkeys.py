"""ServiceAccountKey handlers: register a supplied public key, or generate a pair into an owned Secret.

The private key of a generated pair is written only into the key's Secret; the status carries the
public half, and the trust bundle takes registered keys from an index over the resources. Bad input
becomes Ready=False with one Warning per change; a missing account heals on the next timer tick.
"""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from tessera import errors
from tessera.api import serviceaccountkey as sak_api
from tessera.core import accountkeys, status
from tessera.crypto import keys
from tessera.kube import client, objects

TRANSIENT_DELAY = 10.0


async def serviceaccountkeys_index(body: kopf.Body, **_: Any) -> Any:
    """(namespace, name) -> the key the bundle may trust; nothing while it is not Ready or is disabled."""
    key = accountkeys.registered(body)
    return {(key.namespace, key.name): key} if key is not None else {}


async def _generated_public(kube: client.Clients, sak: sak_api.ServiceAccountKey, body: kopf.Body) -> keys.PublicKey:
    """The public half of the key's pair: from status when known, else from (or into) its Secret."""
    if sak.status.public_key:
        return keys.load_public_pem(sak.status.public_key)
    assert sak.spec.generate is not None
    manifest = accountkeys.build_key_secret(sak, keys.generate(sak.spec.generate.algorithm))
    kopf.append_owner_reference(manifest, owner=body)
    stored = await objects.create_secret_if_absent(kube, manifest)  # a pair from a previous attempt wins
    if not objects.is_ours(stored):
        raise errors.Conflict(f"Secret {sak.namespace}/{accountkeys.key_secret_name(sak)} exists and is not Tessera's")
    return keys.public_of(accountkeys.private_key_from_secret(stored))


async def serviceaccountkey_reconcile(
    body: kopf.Body, patch: kopf.Patch, memo: Any, logger: kopf.Logger, **kw: Any
) -> None:
    sak = sak_api.ServiceAccountKey.parse(body)
    now = datetime.datetime.now(datetime.UTC)
    exists = (sak.namespace, sak.spec.service_account_name) in kw["serviceaccounts_index"]
    generated = None
    try:
        if sak.spec.generate is not None and exists and not sak.spec.disabled:
            generated = await _generated_public(memo.kube, sak, body)
        decided = accountkeys.plan(sak, exists, generated, now)
    except errors.Conflict as exc:
        decided = accountkeys.Reject("SecretNameTaken", str(exc))
    except errors.KeyMaterialError as exc:
        decided = accountkeys.Reject(accountkeys.INVALID, f"the generated key's Secret is unreadable: {exc}")
    except errors.KubeError as exc:
        raise kopf.TemporaryError(f"{exc}; will retry", delay=TRANSIENT_DELAY) from exc
    new_status = accountkeys.status(sak, decided, now)
    if not status.needs_update(body.get("status"), new_status):
        return  # nothing new: timer ticks stay silent
    patch.status.update(new_status)
    if isinstance(decided, accountkeys.Reject):
        kopf.warn(body, reason=decided.reason, message=decided.message)
        raise kopf.PermanentError(decided.message)
    logger.info("%s: %s", decided.reason, decided.message)
