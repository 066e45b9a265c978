"""The live bundle channel's serving side: every namespace's trust bundle, as the operator last wrote
it, and the long polls waiting for a newer one.

An informer watches the ConfigMaps named ``tessera-trust-bundle`` in every namespace (a field
selector on the name: RBAC grants the issuer exactly those, by name); each holds its text and its
sequence. A poll that already lacks the current bundle is answered at once; the others wait on a
future of their namespace, which the watch thread resolves (through the event loop) when that
namespace's bundle changes. A waiting poll costs a future and its connection, nothing more; a
change wakes only its namespace's polls.

Reviews: the Pod's Kubernetes token is checked by a TokenReview, whose answer is reused for the
same token (keyed by a digest, never the token) for a while (:mod:`tessera.core.channel`); at most
:data:`REVIEW_CONCURRENCY` reviews run at once, and beyond :data:`REVIEW_BACKLOG` waiting ones a poll
is answered 503 with a Retry-After, so a crowd of sidecars reconnecting together cannot pile onto
the API server.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from tessera import errors, trustbundle
from tessera.core import channel, exchange, settings
from tessera.crypto import tokens as crypto_tokens
from tessera.kube import client, informer, issuing

log = logging.getLogger("tessera.issuer")

REVIEW_CONCURRENCY = 16
REVIEW_BACKLOG = 512
SHED_RETRY_AFTER = 2


class Published(NamedTuple):
    sequence: int  # 0: the bundle has none (an operator before sequences); never served by the channel
    text: bytes


def published(obj: dict[str, Any]) -> Published | None:
    text = (obj.get("data") or {}).get(trustbundle.BUNDLE_KEY)
    if not text:
        return None
    try:
        bundle = trustbundle.parse(text)
    except errors.BundleError as exc:
        meta = obj.get("metadata") or {}
        log.warning("The trust bundle of %s does not parse; not served: %s", meta.get("namespace"), exc)
        return None
    return Published(bundle.sequence or 0, text.encode())


class Hub:
    def __init__(self, kube: client.Clients) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self.closing = False
        self.informer: informer.Informer[Published] = informer.Informer(
            kube.api, "trust bundles", kube.core.list_config_map_for_all_namespaces, published, self._changed,
            field_selector=f"metadata.name={settings.TRUST_BUNDLE_CONFIGMAP}",
        )  # fmt: skip

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.informer.start()

    def _changed(self, key: informer.Key | None) -> None:  # in the watch thread
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake, None if key is None else key[0])

    def _wake(self, namespace: str | None) -> None:
        chosen = list(self._waiters) if namespace is None else [namespace]
        for name in chosen:
            for waiter in self._waiters.get(name, ()):
                if not waiter.done():
                    waiter.set_result(None)

    def close(self) -> None:
        """Answer every waiting poll now (nothing newer): at shutdown, so callers move to another replica."""
        self.closing = True
        self._wake(None)
        self.informer.stop()

    @property
    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())

    def current(self, namespace: str) -> Published | None:
        return self.informer.get(namespace, settings.TRUST_BUNDLE_CONFIGMAP)

    async def newer(self, namespace: str, after: int, seconds: float) -> Published | None:
        """The namespace's bundle once its sequence exceeds ``after``; None after ``seconds``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            found = self.current(namespace)
            if found is not None and found.sequence > after:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0 or self.closing:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            waiting = self._waiters.setdefault(namespace, set())
            waiting.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                waiting.discard(waiter)
                if not waiting:
                    self._waiters.pop(namespace, None)


class _Reviewed(NamedTuple):
    namespace: str | None  # None: the API server refused the token
    message: str
    until: float


def _expiry(token: str) -> float | None:
    try:
        exp = crypto_tokens.unverified_claims(token).get("exp")
    except crypto_tokens.Rejected:
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class Reviews:
    """TokenReviews of the channel's callers, remembered per token for a while."""

    def __init__(self, kube: client.Clients, audience: str, clock: Callable[[], float] = time.time) -> None:
        self._kube, self._audience, self._clock = kube, audience, clock
        self._known: dict[bytes, _Reviewed] = {}
        self._slots = asyncio.Semaphore(REVIEW_CONCURRENCY)
        self._backlog = 0
        self.reviews = 0  # sent to the API server
        self.shed = 0  # polls answered 503 because too many reviews were waiting

    def _remember(self, key: bytes, found: _Reviewed) -> None:
        if len(self._known) >= 50_000:
            now = self._clock()
            self._known = {k: v for k, v in self._known.items() if v.until > now}
        self._known[key] = found

    async def namespace(self, token: str) -> str:
        """The namespace of the service account the token belongs to; :class:`channel.Refused` otherwise."""
        key = hashlib.blake2b(token.encode("ascii", "replace"), digest_size=16).digest()
        found = self._known.get(key)
        if found is None or found.until <= self._clock():
            if self._backlog >= REVIEW_BACKLOG:
                self.shed += 1
                raise channel.Refused(503, "busy", "too many callers at once; retry shortly", SHED_RETRY_AFTER)
            self._backlog += 1
            try:
                async with self._slots:
                    found = self._known.get(key)
                    if found is None or found.until <= self._clock():
                        found = await self._review(token)
                        self._remember(key, found)
            finally:
                self._backlog -= 1
        if found.namespace is None:
            raise channel.Refused(401, "token_refused", found.message)
        return found.namespace

    async def _review(self, token: str) -> _Reviewed:
        self.reviews += 1
        now = self._clock()
        try:
            reviewed = await issuing.review(self._kube, token, self._audience)
        except exchange.Refusal as refusal:
            return _Reviewed(None, refusal.description, channel.trusted_until(now, None, accepted=False))
        except errors.KubeError as exc:
            raise channel.Refused(503, "review_failed", f"the token could not be checked: {exc}", 5) from exc
        return _Reviewed(reviewed.namespace, "", channel.trusted_until(now, _expiry(token), accepted=True))
