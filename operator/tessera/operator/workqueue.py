"""The operator's work queue: which objects to reconcile, when, and how failures are retried.

Kopf watches the objects and fills the indexes; its event handlers only put keys here
(``(kind, namespace, name)``). A fixed number of workers take keys and call the kind's reconcile,
which reads the object from an index, decides in :mod:`tessera.core`, writes what differs, and
returns when the object next needs a look (a token's refresh, a key's expiry), or None. So:

- a key is queued at most once, and never reconciled by two workers at once; one added while it is
  being reconciled runs again right after (nothing is lost, nothing runs twice at once);
- concurrency is bounded (``workers``), however many objects a start-up or a burst brings;
- a scheduled look replaces a timer per object: one task sleeps until the earliest one is due;
- a failure is retried with exponential backoff (:func:`tessera.core.backoff.retry_delay`) until it
  succeeds or the object changes (a change queues it at once); one log line per failure, no
  traceback for an API error;
- a call the API server did not answer (:class:`errors.Unavailable`) parks the key: one prober asks
  the API server every second, and the moment it answers every parked key is queued again, so an
  outage costs seconds after it ends, not a backoff interval.

Workers wait while Kopf peering has paused this replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

from tessera import errors
from tessera.core import backoff

Key = tuple[str, str, str]  # (kind, namespace, name); cluster-scoped kinds have namespace ""
Reconcile = Callable[[str, str], Awaitable[float | None]]  # (namespace, name) -> seconds until the next look
PROBE_SECONDS = 1.0

logger = logging.getLogger("tessera.queue")


class Hooks(Protocol):
    """What the queue reports (the metrics)."""

    def finished(self, kind: str, result: str, seconds: float) -> None:
        """A reconcile ended: ``result`` is ok, retry (failed, retried later) or unavailable."""

    def depth(self, ready: int, active: int, scheduled: int, parked: int) -> None:
        """How many keys wait to run now, run, wait for a moment, wait for the API server."""


class NoHooks:
    def finished(self, kind: str, result: str, seconds: float) -> None:
        pass

    def depth(self, ready: int, active: int, scheduled: int, parked: int) -> None:
        pass


def describe(key: Key) -> str:
    kind, namespace, name = key
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


class WorkQueue:
    def __init__(
        self,
        reconcilers: Mapping[str, Reconcile],
        workers: int,
        active: Callable[[], Awaitable[None]],
        available: Callable[[], Awaitable[bool]],
        hooks: Hooks | None = None,
    ) -> None:
        """``active`` returns once this replica may act; ``available`` says whether the API server answers."""
        self._reconcilers = dict(reconcilers)
        self._workers = workers
        self._active_gate = active
        self._available = available
        self._hooks: Hooks = hooks or NoHooks()
        self._ready: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._due: dict[Key, float] = {}  # key -> loop time of its scheduled look
        self._heap: list[tuple[float, int, Key]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._failures: dict[Key, int] = {}
        self._parked: set[Key] = set()
        self._probing = asyncio.Event()
        self._drained = asyncio.Event()

    # --- adding work ---------------------------------------------------------------------------------

    def add(self, key: Key) -> None:
        """Reconcile ``key`` as soon as a worker is free."""
        if key in self._running:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.put_nowait(key)
            self._report()

    def add_all(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.add(key)

    def add_after(self, key: Key, seconds: float) -> None:
        """Reconcile ``key`` in ``seconds`` (or earlier, if it is due earlier anyway)."""
        if seconds <= 0:
            self.add(key)
            return
        when = time.monotonic() + seconds
        if self._due.get(key, float("inf")) <= when:
            return
        self._schedule(key, when)

    def forget(self, key: Key) -> None:
        """The object is gone: drop its scheduled look and its failure count."""
        self._due.pop(key, None)
        self._failures.pop(key, None)
        self._parked.discard(key)

    def _schedule(self, key: Key, when: float) -> None:
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        self._wake.set()
        self._report()

    # --- what is waiting ------------------------------------------------------------------------------

    def pending(self) -> int:
        """Keys waiting to run or running now (the backlog)."""
        return len(self._queued) + len(self._running)

    def scheduled(self, key: Key) -> float | None:
        """Seconds until ``key``'s scheduled look, if it has one."""
        when = self._due.get(key)
        return None if when is None else max(0.0, when - time.monotonic())

    async def drained(self) -> None:
        """Until nothing waits to run or runs (scheduled looks may remain)."""
        await asyncio.sleep(0)  # let the caller's adds land first
        while self.pending():
            self._drained.clear()
            await self._drained.wait()

    def _report(self) -> None:
        self._hooks.depth(len(self._queued), len(self._running), len(self._due), len(self._parked))
        if not self.pending():
            self._drained.set()

    # --- running ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the scheduler, the prober and the workers until cancelled."""
        tasks = [asyncio.create_task(self._scheduler()), asyncio.create_task(self._prober())]
        tasks += [asyncio.create_task(self._worker()) for _ in range(self._workers)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _scheduler(self) -> None:
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now:
                when, _, key = heapq.heappop(self._heap)
                if self._due.get(key) == when:  # not replaced or forgotten since
                    del self._due[key]
                    self.add(key)
            self._report()
            self._wake.clear()
            timeout = self._heap[0][0] - now if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _prober(self) -> None:
        while True:
            await self._probing.wait()
            await asyncio.sleep(PROBE_SECONDS)
            if not self._parked or not await self._available():
                if not self._parked:
                    self._probing.clear()
                continue
            parked, self._parked = self._parked, set()
            self._probing.clear()
            logger.warning("The API server answers again: resuming %d reconciles that waited for it", len(parked))
            self.add_all(parked)

    async def _worker(self) -> None:
        while True:
            key = await self._ready.get()
            await self._active_gate()  # a replica paused by peering reconciles nothing
            self._queued.discard(key)
            self._running.add(key)
            try:
                await self._one(key)
            finally:
                self._running.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.add(key)
                self._report()

    async def _one(self, key: Key) -> None:
        kind, namespace, name = key
        started = time.monotonic()
        result = "ok"
        try:
            later = await self._reconcilers[kind](namespace, name)
        except errors.Unavailable as exc:
            result = "unavailable"
            self._park(key, exc)
        except Exception as exc:  # every failure is retried; the log says what it was
            result = "retry"
            self._retry(key, exc)
        else:
            self._failures.pop(key, None)
            self._due.pop(key, None)
            if later is not None:
                self._schedule(key, time.monotonic() + max(later, 0.0))
        finally:
            self._hooks.finished(kind, result, time.monotonic() - started)

    def _park(self, key: Key, exc: errors.Unavailable) -> None:
        logger.warning("Failed to reconcile %s, will retry once the API server answers: %s", describe(key), exc)
        self._parked.add(key)
        self._probing.set()

    def _retry(self, key: Key, exc: Exception) -> None:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = backoff.retry_delay(failures, "/".join(key))
        if isinstance(exc, errors.TesseraError) or failures > 1:
            logger.warning("Failed to reconcile %s, will retry in %.1fs: %s", describe(key), delay, _said(exc))
        else:  # a bug: its traceback, once, is what anyone fixing it needs
            logger.exception("Unexpected failure reconciling %s, will retry in %.1fs", describe(key), delay)
        self._schedule(key, time.monotonic() + delay)


def _said(exc: Exception) -> str:
    return str(exc) if isinstance(exc, errors.TesseraError) else f"{type(exc).__name__}: {exc}"
