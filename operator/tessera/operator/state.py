"""Runtime state shared by handlers and the background tasks, kept on Kopf's memo.

:class:`Keys` holds the issuer key set in use. :class:`Hub` wakes the trust bundle publisher whenever one
of its inputs changed. :class:`RevocationStore`
holds the revocations and persists every change in a ConfigMap before anyone relies on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tessera import errors
from tessera.core import issuer, revocations, secrets, settings, tokens
from tessera.kube import client, objects

IDLE_SECONDS = 300.0
RETRY_SECONDS = 5.0


def seconds_until(moment: datetime.datetime | None, cap: float = IDLE_SECONDS) -> float:
    """How long to sleep until ``moment`` (a hair past it), at most ``cap``."""
    if moment is None:
        return cap
    return min(cap, max((moment - datetime.datetime.now(datetime.UTC)).total_seconds(), 0.0) + 0.01)


async def forever(
    what: str, log: logging.Logger, step: Callable[[], Awaitable[float]], wait: Callable[[float], Awaitable[None]]
) -> None:
    """Run ``step`` for the operator's lifetime. It returns the longest pause before the next round;
    ``wait`` pauses that long or until woken. Failures are logged and retried, never fatal."""
    while True:
        try:
            pause = await step()
        except (errors.TesseraError, OSError) as exc:
            log.error("Failed %s, will retry: %s", what, exc)
            pause = RETRY_SECONDS
        except Exception:  # a bug must not silently end this work for the operator's lifetime
            log.exception("Unexpected failure %s, will retry", what)
            pause = RETRY_SECONDS
        await wait(pause)


class Hub:
    def __init__(self) -> None:
        self._changed = asyncio.Event()
        # Kopf calls no handler before every index is filled from its initial listing; the first
        # handler call sets this, so nothing is published from half-known state after a restart.
        self.indexed = asyncio.Event()

    def touch(self) -> None:
        self._changed.set()

    async def wait(self, seconds: float) -> None:
        """Until something changed or ``seconds`` passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)
        self._changed.clear()


class Keys:
    """The issuer key set in use. Kopf hands each object's handlers a shallow copy of the memo, so
    anything reassigned at run time lives in a shared object like this one, never on the memo itself."""

    def __init__(self) -> None:
        self.current: issuer.KeySet = ()
        self.changed = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        """Until the key set changes or ``seconds`` passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), seconds)
        self.changed.clear()

    def replace(self, keyset: issuer.KeySet) -> bool:
        """Use ``keyset`` from now on; return whether it differs from the one in use."""
        if sorted(k.kid for k in keyset) == sorted(k.kid for k in self.current):
            return False
        self.current = keyset
        self.changed.set()
        return True


class RevocationStore:
    def __init__(
        self, kube: client.Clients, cfg: settings.Settings, hub: Hub, current: dict[str, revocations.Revocation]
    ) -> None:
        self._kube, self._cfg, self._hub = kube, cfg, hub
        self._lock = asyncio.Lock()
        self.current: dict[str, revocations.Revocation] = current

    @classmethod
    async def load(cls, kube: client.Clients, cfg: settings.Settings, hub: Hub) -> RevocationStore:
        """Read the stored revocations; a malformed store stops start-up rather than forgetting them."""
        data = await objects.read_configmap_data(kube, cfg.namespace, settings.REVOCATIONS_CONFIGMAP)
        text = (data or {}).get(secrets.REVOCATIONS_KEY)
        return cls(kube, cfg, hub, revocations.loads(text) if text else {})

    async def revoke(self, subject: str, now: datetime.datetime, token: tokens.ObservedToken) -> None:
        """Revoke every token of ``subject`` issued so far; ``token`` is the newest one's facts."""
        alive_until = tokens.alive_until(token, now, self._cfg)
        last_issued = None if token is tokens.UNKNOWN else token.issued_at
        async with self._lock:
            current = revocations.pruned(self.current, now)
            leeway = self._cfg.clock_leeway
            await self._save(revocations.revoke(current, subject, now, alive_until, leeway, last_issued))

    async def prune(self, now: datetime.datetime) -> None:
        async with self._lock:
            kept = revocations.pruned(self.current, now)
            if kept != self.current:
                await self._save(kept)

    async def _save(self, new: dict[str, revocations.Revocation]) -> None:
        await objects.ensure_configmap(self._kube, secrets.build_revocations_configmap(new, self._cfg))
        self.current = new
        self._hub.touch()


class Activity:
    """Whether this replica may act: Kopf peering pauses its handlers, and this pauses the operator's
    own background tasks with them (publisher, rotation), so a standby never writes from a view that
    stopped updating.

    A replica that was active, was paused, and would resume exits instead (SIGTERM to itself, a
    normal shutdown; its Deployment starts it again): after a pause its indexes may still hold
    objects deleted meanwhile, and a fresh start lists everything again."""

    def __init__(self, paused: Any | None) -> None:
        self._paused = paused  # Kopf's ToggleSet; None when unknown (then always active)

    def active(self) -> bool:
        return self._paused is None or not self._paused.is_on()

    async def wait_active(self) -> None:
        if self._paused is not None:
            await self._paused.wait_for(False)

    async def watch(
        self, logger: logging.Logger, working: Callable[[], bool], exit_process: Callable[[], None]
    ) -> None:
        """Exit on the first resume after a pause that came once the operator was ``working`` (its
        handlers had run); pauses before that (Kopf pauses briefly at start while peering settles)
        only gate the background tasks."""
        if self._paused is None:
            return
        while True:
            await self._paused.wait_for(True)
            had_state = working()
            logger.warning("Paused by Kopf peering: the background tasks stop writing while another replica acts")
            await self._paused.wait_for(False)
            if had_state:
                logger.warning("Resuming after a pause: restarting, so nothing is written from state older than it")
                exit_process()
                return
            logger.info("Resuming after a pause that came before any handler ran")
