"""The issuer key rotation schedule: a background task that writes the key Secret when a key is due.

The schedule is decided in :mod:`tessera.core.issuer`; this task reads the Secret, writes the rotated
key set with optimistic concurrency (so racing replicas rotate once) and adopts what it wrote. A
change someone else made reaches memory through the keeper (:mod:`tessera.operator.keeper`).
"""

from __future__ import annotations

import logging

from tessera import errors
from tessera.core import clock, issuer
from tessera.kube import issuerkeys
from tessera.operator import keeper, runtime, state

logger = logging.getLogger("tessera.issuer")


async def rotate_forever(rt: runtime.Runtime) -> None:
    """Apply the schedule whenever something is due; runs for the operator's lifetime."""

    async def rotate() -> float:
        await rt.activity.wait_active()  # a replica paused by peering writes nothing
        if not rt.issuer_keys.current:
            return state.IDLE_SECONDS  # the keys are lost: nothing to rotate (see the keeper)
        now = clock.utcnow()
        stored = await issuerkeys.read(rt.kube, rt.cfg)
        if stored is None or stored.keyset is None:
            return state.RETRY_SECONDS  # gone or unreadable: the keeper restores it first
        plan = issuer.rotation(stored.keyset, rt.cfg, now)
        if plan.changes:
            rotated = issuer.rotated(stored.keyset, plan, rt.cfg, now)
            try:
                version = await issuerkeys.replace(rt.kube, rt.cfg, rotated, stored.version)
            except errors.Conflict:
                return state.RETRY_SECONDS  # a peer changed it first: the keeper adopts theirs
            rt.keys_written.wrote(keeper.KEYS, version, None)
            logger.info("Rotated the issuer keys; now %s", [k.kid for k in rotated])
            await keeper.adopt(rt, rotated)
        return state.seconds_until(issuer.next_rotation_event(rt.issuer_keys.current, rt.cfg))

    await state.forever("to rotate the issuer keys", logger, rotate, rt.issuer_keys.wait)
