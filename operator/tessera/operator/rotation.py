"""Issuer keys at run time: the rotation schedule (a background task) and reloading on every change.

Every change of the key Secret, ours or a peer's, arrives through one watch handler, which swaps
the in-memory key set, republishes the issuer JWKS and wakes the bundle publisher. The rotation
task only writes the Secret (with optimistic concurrency, so racing replicas rotate once).
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import kopf

from tessera import errors
from tessera.core import issuer, secrets, settings
from tessera.kube import issuerkeys, objects
from tessera.operator import state

logger = logging.getLogger("tessera.issuer")


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def adopt(memo: Any, keyset: issuer.KeySet) -> None:
    """Make ``keyset`` the one in use, publish it, and wake whoever depends on it."""
    if not memo.issuer_keys.replace(keyset):
        return
    memo.hub.touch()
    logger.info("Loaded issuer keys %s", [k.kid for k in keyset])
    cfg: settings.Settings = memo.cfg
    if await objects.ensure_configmap(memo.kube, secrets.build_jwks_configmap(keyset, cfg)):
        logger.info("Published the issuer JWKS in %s/%s", cfg.namespace, settings.ISSUER_JWKS_CONFIGMAP)


async def issuer_keys_changed(body: kopf.Body, memo: Any, type: str | None, **_: Any) -> None:
    """Watch handler for the issuer key Secret."""
    if type == "DELETED":
        logger.warning("The issuer key Secret was deleted; the keys in memory keep signing until restart")
        return
    try:
        keyset = issuer.loads(objects.secret_text(dict(body), issuerkeys.KEYS_DATA_KEY))
    except errors.KeyMaterialError as exc:
        logger.error("Ignored a change of the issuer key Secret: %s", exc)
        return
    await adopt(memo, keyset)


async def rotate_forever(memo: Any) -> None:
    """Apply the schedule whenever something is due; runs for the operator's lifetime."""
    cfg: settings.Settings = memo.cfg

    async def rotate() -> float:
        await memo.activity.wait_active()  # a replica paused by peering writes nothing
        rotated = await issuerkeys.rotate(memo.kube, cfg, _utcnow())
        if rotated is not None:
            logger.info("Rotated the issuer keys; now %s", [k.kid for k in rotated])
            await adopt(memo, rotated)
        return state.seconds_until(issuer.next_rotation_event(memo.issuer_keys.current, cfg))

    await state.forever("to rotate the issuer keys", logger, rotate, memo.issuer_keys.wait)
