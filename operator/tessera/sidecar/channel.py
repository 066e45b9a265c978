"""The live bundle channel: the sidecar long-polls the issuer service for its namespace's trust bundle,
so a change (a revocation, a new key) arrives within a second instead of at kubelet's next refresh
of the mounted file (about a minute).

Each poll names the sequence the sidecar holds (``after``); the issuer answers as soon as it has a
newer bundle, or 304 after ``wait`` seconds. The Pod's projected Kubernetes token (re-read for every
poll: kubelet renews it) authenticates it; the issuer serves only the Pod's own namespace. Whatever
arrives is offered to the sidecar like a mounted bundle: taken only when its sequence is newer.

Failures (cannot connect, TLS, a refusal, a bundle that does not parse) are counted by kind in the
metrics, shown in ``/readyz``, and retried after an exponential backoff with full jitter, bounded by
:data:`MAX_BACKOFF` (a ``Retry-After`` from the issuer is a floor): thousands of sidecars that lost
the issuer at the same moment come back spread over seconds, not at once. The mounted file keeps
working meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tessera import protocol
from tessera.sidecar import httpclient, metrics

log = logging.getLogger("tessera.sidecar")

BASE_BACKOFF = 0.5
MAX_BACKOFF = 30.0
MAX_BUNDLE_BYTES = 2 * 1024 * 1024
FAILURE_KINDS = ("connect", "tls", "timeout", "unauthorized", "forbidden", "not_found", "busy", "refused", "token")


def backoff(failures: int, rng: Callable[[], float] = random.random, floor: float = 0.0) -> float:
    """Seconds before the next attempt after ``failures`` consecutive failures: uniform in
    [0, min(MAX_BACKOFF, BASE_BACKOFF * 2**(failures - 1))] (full jitter), plus ``floor`` (the
    issuer's Retry-After) spread by up to half of itself."""
    ceiling = min(MAX_BACKOFF, BASE_BACKOFF * 2.0 ** max(0, min(failures - 1, 16)))
    return floor * (1 + 0.5 * rng()) + ceiling * rng()


class Failed(Exception):
    def __init__(self, kind: str, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.kind, self.retry_after = kind, retry_after


def _refusal(status: int, body: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        doc: Any = json.loads(body)
        return str(doc.get("error_description") or doc.get("reason") or doc.get("error") or "")[:200]
    return ""


def _retry_after(answer: httpclient.Answer) -> float:
    try:
        return min(MAX_BACKOFF, max(0.0, float(answer.header("retry-after") or 0)))
    except ValueError:
        return 0.0


_STATUS_KINDS = {401: "unauthorized", 403: "forbidden", 404: "not_found", 429: "busy", 503: "busy"}


class Channel:
    """One subscription: ``offer(text, "channel")`` receives every bundle that arrives and says what
    became of it; ``sequence()`` is the sequence held (0: none)."""

    def __init__(
        self,
        issuer_url: str,
        namespace: str,
        token_file: Path,
        ca_file: Path | None,
        offer: Callable[[bytes, str], str],
        sequence: Callable[[], int],
        counters: metrics.Metrics,
        wait: int = protocol.DEFAULT_WAIT_SECONDS,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.origin = httpclient.Origin.parse(issuer_url)
        self.namespace, self.token_file, self.ca_file = namespace, token_file, ca_file
        self._offer, self._sequence, self._metrics = offer, sequence, counters
        self.wait, self._rng = wait, rng
        self.up = False
        self.failures = 0  # in a row
        self.last_error: str | None = None
        self.last_answer_at: float | None = None
        self.next_attempt_at: float | None = None
        self._pool: httpclient.Pool | None = None
        self._ca_id: tuple[int, int] | None = None
        for kind in FAILURE_KINDS:  # every series exists from the start, at 0
            counters.channel_failures.setdefault((kind,), 0)

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.ca_file is not None and self.ca_file.exists():
            context.load_verify_locations(cafile=str(self.ca_file))
        return context

    def _pool_for_now(self) -> httpclient.Pool:
        """The connection pool, made again when the CA file changed (kubelet swapped it)."""
        ca_id = None
        if self.ca_file is not None:
            with contextlib.suppress(OSError):
                st = self.ca_file.stat()
                ca_id = (st.st_ino, st.st_mtime_ns)
        if self._pool is None or ca_id != self._ca_id:
            self._ca_id = ca_id
            try:
                context = self._context() if self.origin.scheme == "https" else None
            except (OSError, ssl.SSLError) as exc:
                raise Failed("tls", f"cannot load the issuer CA {self.ca_file}: {exc}") from exc
            self._pool = httpclient.Pool(self.origin, limit=2, keepalive=self.wait + 30.0, ssl_context=context)
        return self._pool

    def _token(self) -> str:
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise Failed("token", f"cannot read the Kubernetes token {self.token_file}: {exc.strerror}") from exc
        if not token:
            raise Failed("token", f"the Kubernetes token file {self.token_file} is empty")
        return token

    async def poll(self) -> None:
        """One long poll; :class:`Failed` says why it failed."""
        token = self._token()
        pool = self._pool_for_now()
        wait = self.wait if self.up else 0  # a first poll answers at once: the channel shows up (or not) at once
        target = protocol.bundle_target(self.namespace, self._sequence(), wait)
        headers = [("Authorization", f"Bearer {token}"), ("Accept", "application/json")]
        try:
            answer = await pool.request("GET", target, headers, head_seconds=wait + 15.0)
            body = await answer.read(MAX_BUNDLE_BYTES)
        except httpclient.UpstreamError as exc:
            cause = exc.__cause__ or exc
            kind = (
                "tls" if isinstance(cause, ssl.SSLError) else "timeout" if "did not answer" in str(exc) else "connect"
            )
            raise Failed(kind, str(exc)) from exc
        self.last_answer_at = time.time()
        if answer.status == 200:
            if self._offer(body, "channel") == "refused":
                raise Failed("refused", "the issuer sent a bundle that does not parse")
        elif answer.status != 304:
            kind = _STATUS_KINDS.get(answer.status, "refused")
            detail = _refusal(answer.status, body)
            raise Failed(kind, f"the issuer answered {answer.status}: {detail}", _retry_after(answer))
        self._metrics.channel_polls += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop``; never raises."""
        while not stop.is_set():
            try:
                await self.poll()
            except Failed as failed:
                await self._failed(failed.kind, str(failed), failed.retry_after, stop)
                continue
            except Exception as exc:  # the channel must outlive any surprise; the mount keeps working
                log.exception("Unexpected error in the bundle channel")
                await self._failed("refused", type(exc).__name__, 0.0, stop)
                continue
            if not self.up:
                log.info("The live bundle channel to %s is up (sequence %d held)", self.origin, self._sequence())
            self.up, self.failures, self.last_error, self.next_attempt_at = True, 0, None, None

    async def _failed(self, kind: str, message: str, retry_after: float, stop: asyncio.Event) -> None:
        self.failures += 1
        self._metrics.count(self._metrics.channel_failures, kind)
        if self.up or self.failures == 1 or self.last_error != message:
            log.warning("The live bundle channel failed (%s): %s; the mounted bundle stays in use", kind, message)
        self.up, self.last_error = False, f"{kind}: {message}"
        delay = backoff(self.failures, self._rng, retry_after)
        self.next_attempt_at = time.time() + delay
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "state": "up" if self.up else ("connecting" if self.failures == 0 else "failing"),
            "issuer": str(self.origin),
            "consecutiveFailures": self.failures,
            "lastError": self.last_error,
            "lastAnswerSecondsAgo": None if self.last_answer_at is None else round(now - self.last_answer_at, 1),
            "nextAttemptInSeconds": None
            if self.next_attempt_at is None
            else round(max(0.0, self.next_attempt_at - now), 1),
        }

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
