"""Run-time state shared by handlers, reconciles and the background tasks (parts of :class:`runtime.Runtime`).

:class:`Keys` holds the issuer key set in use (or, when its Secret was lost, only the public keys
last published). :class:`Hub` wakes the trust bundle publisher whenever one of its inputs changed.
:class:`RevocationStore` holds the revocations and persists every change in a ConfigMap before
anyone relies on it; a damaged or deleted ConfigMap is written again from memory. :class:`Pending`
remembers what this operator wrote until its watch shows it (an index may lag a write by a few
milliseconds; a later event, such as a deletion, supersedes it). :class:`Activity` pauses the
background work with Kopf peering.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeVar

from tessera import errors
from tessera.core import clock, grants, issuer, manifests, revocations, settings, tokens
from tessera.kube import client, objects
from tessera.operator import metrics

IDLE_SECONDS = 300.0
RETRY_SECONDS = 5.0
PENDING_SECONDS = 5.0  # how long an own write is trusted over an index that has not shown it
K = TypeVar("K")
V = TypeVar("V")

logger = logging.getLogger("tessera.operator")


def seconds_until(moment: datetime.datetime | None, cap: float = IDLE_SECONDS) -> float:
    """How long to sleep until ``moment`` (a hair past it), at most ``cap``."""
    if moment is None:
        return cap
    return min(cap, max((moment - clock.utcnow()).total_seconds(), 0.0) + 0.01)


async def forever(
    what: str, log: logging.Logger, step: Callable[[], Awaitable[float]], wait: Callable[[float], Awaitable[None]]
) -> None:
    """Run ``step`` for the operator's lifetime. It returns the longest pause before the next round;
    ``wait`` pauses that long or until woken. Failures are logged (once per distinct failure in a row)
    and retried, never fatal."""
    failing = ""
    while True:
        try:
            pause = await step()
            failing = ""
        except (errors.TesseraError, OSError) as exc:
            if str(exc) != failing:
                log.error("Failed %s, will retry: %s", what, exc)
            failing, pause = str(exc), RETRY_SECONDS
        except Exception:  # a bug must not silently end this work for the operator's lifetime
            log.exception("Unexpected failure %s, will retry", what)
            pause = RETRY_SECONDS
        await wait(pause)


class Signal:
    """Wake one waiter when something changed (set), or let it sleep until a deadline."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def touch(self) -> None:
        self._changed.set()

    async def wait(self, seconds: float) -> None:
        """Until something changed or ``seconds`` passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), seconds)
        self._changed.clear()


class Hub(Signal):
    """Wakes the trust bundle publisher."""

    def __init__(self) -> None:
        super().__init__()
        # Kopf calls no handler before every index is filled from its initial listing; the first
        # handler call sets this, so nothing is published from half-known state after a restart.
        self.indexed = asyncio.Event()


class Keys(Signal):
    """The issuer key set in use. ``published`` is the JWKS verifiers get: the key set's public keys, or,
    while the key Secret is lost (``lost``), the public keys the JWKS ConfigMap last published, so tokens
    already handed out keep verifying while no new one can be signed."""

    def __init__(self) -> None:
        super().__init__()
        self.current: issuer.KeySet = ()
        self.published: dict[str, Any] = {"keys": []}
        self.lost: tuple[str, ...] = ()  # kids the lost Secret held (from the JWKS ConfigMap)

    def replace(self, keyset: issuer.KeySet) -> bool:
        """Use ``keyset`` from now on; return whether it differs from the one in use."""
        if self.current and sorted(k.kid for k in keyset) == sorted(k.kid for k in self.current):
            return False
        self.current, self.lost = keyset, ()
        self.published = issuer.jwks(keyset)
        self.touch()
        return True

    def lose(self, published: Mapping[str, Any]) -> None:
        """The key Secret is gone and no key is in memory: keep publishing ``published``, sign nothing."""
        self.current = ()
        self.published = dict(published)
        self.lost = tuple(sorted(str(k.get("kid")) for k in published.get("keys") or []))
        self.touch()


class GrantsState:
    """The grants engine, built once every index is full (:mod:`tessera.operator.rolebindings`)."""

    def __init__(self) -> None:
        self.engine: grants.Engine | None = None
        self.built = asyncio.Event()


class Pending(Generic[K, V]):
    """What this operator wrote per key (a value and the resourceVersion the API server gave it), until
    the watch shows that version or anything after it: meanwhile the index may still show the state
    from before the write, and the write is the truth.

    A watch event can arrive before the write call returns: the version last seen per key is kept, so
    such a write is never recorded as pending. And a pending write is trusted for :data:`PENDING_SECONDS`
    at most (the index catches up in milliseconds): :meth:`expired` hands out the keys whose echo never
    came, to be looked at again, so no lost event can hide a later change for long."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._written: dict[K, tuple[str, V, float]] = {}
        self._seen: dict[K, str] = {}
        self._clock = clock

    def wrote(self, key: K, version: str, value: V) -> None:
        if self._seen.get(key) != version:
            self._written[key] = (version, value, self._clock() + PENDING_SECONDS)

    def seen(self, key: K, version: str | None, gone: bool = False) -> bool:
        """The watch delivered ``version`` of the object (or its deletion): a write of that version is
        visible now; a deletion comes after any write of ours (a watch delivers in order). Return whether
        this was the echo of our own pending write (nothing new to look at)."""
        entry = self._written.get(key)
        echo = entry is not None and not gone and entry[0] == version
        if entry is not None and (gone or echo):
            del self._written[key]
        if gone:
            self._seen.pop(key, None)
        elif version:
            self._seen[key] = version
        return echo

    def get(self, key: K) -> tuple[bool, V | None]:
        """(whether a write is pending, its value)."""
        entry = self._written.get(key)
        if entry is None or entry[2] <= self._clock():
            return (False, None)
        return (True, entry[1])

    def expired(self) -> list[K]:
        """The keys whose write stood its time without its echo (dropped now: look at them again)."""
        now = self._clock()
        gone = [key for key, (_, _, until) in self._written.items() if until <= now]
        for key in gone:
            del self._written[key]
        return gone

    def forget(self, key: K) -> None:
        self._written.pop(key, None)
        self._seen.pop(key, None)


class RevocationStore:
    """The revocations in force, persisted in a ConfigMap before anyone relies on them."""

    def __init__(
        self,
        kube: client.Clients,
        cfg: settings.Settings,
        hub: Hub,
        current: dict[str, revocations.Revocation],
        counts: metrics.Metrics,
    ) -> None:
        self._kube, self._cfg, self._hub, self._metrics = kube, cfg, hub, counts
        self._lock = asyncio.Lock()
        self.current: dict[str, revocations.Revocation] = current

    async def revoke(self, subject: str, now: datetime.datetime, token: tokens.ObservedToken) -> None:
        """Revoke every token of ``subject`` issued so far; ``token`` is the newest one's facts."""
        alive_until = tokens.alive_until(token, now, self._cfg)
        last_issued = None if token is tokens.UNKNOWN else token.issued_at
        async with self._lock:
            current = revocations.pruned(self.current, now)
            leeway = self._cfg.clock_leeway
            await self._save(revocations.revoke(current, subject, now, alive_until, leeway, last_issued))
            self._metrics.revocations_added.inc()

    async def prune(self, now: datetime.datetime) -> None:
        async with self._lock:
            kept = revocations.pruned(self.current, now)
            if kept != self.current:
                removed = len(self.current) - len(kept)
                await self._save(kept)
                self._metrics.revocations_pruned.inc(removed)

    async def heal(self, stored: revocations.Revocations | None, now: datetime.datetime) -> bool:
        """The ConfigMap changed: write it again if it lacks (or weakens) anything in memory, keeping
        anything it holds that memory lacks. Return whether it was written."""
        async with self._lock:
            whole = revocations.pruned(revocations.merged(self.current, stored or {}), now)
            if stored is not None and whole == revocations.pruned(dict(stored), now) and whole == self.current:
                return False
            await self._save(whole)
            return True

    async def _save(self, new: dict[str, revocations.Revocation]) -> None:
        await objects.ensure_configmap(self._kube, manifests.build_revocations_configmap(new, self._cfg))
        self.current = new
        self._metrics.revocations.set(len(new))
        self._hub.touch()


class Activity:
    """Whether this replica may act: Kopf peering pauses its handlers, and this pauses the operator's
    own work with them (the work queue, the publisher, rotation, healing), so a standby never writes
    from a view that stopped updating.

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

    async def watch(self, log: logging.Logger, working: Callable[[], bool], exit_process: Callable[[], None]) -> None:
        """Exit on the first resume after a pause that came once the operator was ``working`` (its
        handlers had run); pauses before that (Kopf pauses briefly at start while peering settles)
        only gate the background tasks."""
        if self._paused is None:
            return
        while True:
            await self._paused.wait_for(True)
            had_state = working()
            log.warning("Paused by Kopf peering: the background tasks stop writing while another replica acts")
            await self._paused.wait_for(False)
            if had_state:
                log.warning("Resuming after a pause: restarting, so nothing is written from state older than it")
                exit_process()
                return
            log.info("Resuming after a pause that came before any handler ran")


@dataclasses.dataclass
class Warned:
    """Failures of background work already logged, so one that repeats is logged once."""

    last: dict[str, str] = dataclasses.field(default_factory=dict)

    def first(self, what: str, message: str) -> bool:
        """Whether ``message`` about ``what`` differs from the last one (then it is remembered)."""
        if self.last.get(what) == message:
            return False
        self.last[what] = message
        return True

    def clear(self, what: str) -> None:
        self.last.pop(what, None)
