"""Fetching identity providers' keys over HTTPS, and a per-process cache that refreshes them.

The cache answers from memory; it fetches a provider's keys when they were never fetched, when they
are due (``refreshSeconds``), or when a token names a kid it does not know, rate-limited by
:func:`tessera.core.providers.may_fetch_for_unknown_kid`. Concurrent requests for one provider share
one fetch (a lock per provider), so a storm of unknown kids costs the provider one request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import ssl
from collections.abc import Callable
from typing import Any

import aiohttp

from tessera import errors
from tessera.api import identityprovider as idp_api
from tessera.core import providers

TIMEOUT = aiohttp.ClientTimeout(total=10)


class FetchError(errors.TesseraError):
    """A provider's discovery document or keys could not be fetched or read."""


def _ssl(spec: idp_api.IdentityProviderSpec) -> ssl.SSLContext:
    if spec.ca_bundle:
        try:
            return ssl.create_default_context(cadata=spec.ca_bundle)
        except (ssl.SSLError, ValueError) as exc:
            raise FetchError("caBundle holds no readable PEM certificate") from exc
    return ssl.create_default_context()


def _describe(exc: Exception) -> str:
    """A stable description of a failed request: the same failure gives the same words, so the status
    and its Warning change only when the failure does (aiohttp's own messages hold object addresses)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLError):
        return "the provider's TLS certificate is not trusted (see spec.caBundle)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.strerror or type(exc.os_error).__name__})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {TIMEOUT.total:.0f} s"
    return type(exc).__name__


async def _bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, but no more than ``limit`` bytes (``read(n)`` alone may return a first chunk only)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def _get_json(session: aiohttp.ClientSession, url: str, context: ssl.SSLContext) -> Any:
    try:
        async with session.get(url, ssl=context, allow_redirects=False, timeout=TIMEOUT) as response:
            if response.status != 200:
                raise FetchError(f"GET {url} answered {response.status}")
            body = await _bounded(response.content, providers.MAX_DOCUMENT_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
        raise FetchError(f"GET {url} failed: {_describe(exc)}") from exc
    if len(body) > providers.MAX_DOCUMENT_BYTES:
        raise FetchError(f"GET {url}: the document is larger than {providers.MAX_DOCUMENT_BYTES} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FetchError(f"GET {url}: the answer is not JSON") from exc


async def fetch(session: aiohttp.ClientSession, spec: idp_api.IdentityProviderSpec) -> providers.KeySet:
    """The provider's usable keys: inline, from ``jwksURI``, or through its discovery document."""
    inline = providers.inline_keys(spec)
    if inline is not None:
        return inline
    context = _ssl(spec)
    uri = spec.jwks_uri
    try:
        if uri is None:
            uri = providers.jwks_uri_from_discovery(
                await _get_json(session, providers.discovery_url(spec), context), spec
            )
        return providers.parse_jwks(await _get_json(session, uri, context), frozenset(spec.algorithms), uri)
    except errors.KeyMaterialError as exc:
        raise FetchError(str(exc)) from exc


@dataclasses.dataclass
class _Entry:
    spec: idp_api.IdentityProviderSpec
    keys: providers.KeySet | None = None
    fetched_at: datetime.datetime | None = None
    attempted_at: datetime.datetime | None = None
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


class Cache:
    """Provider keys by provider name, fetched on demand (see the module docstring). One event loop."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        clock: Callable[[], datetime.datetime],
        refetch: datetime.timedelta = providers.UNKNOWN_KID_INTERVAL,
    ) -> None:
        self._session, self._clock, self._refetch = session, clock, refetch
        self._entries: dict[str, _Entry] = {}
        self.fetches = 0

    async def key(self, name: str, spec: idp_api.IdentityProviderSpec, kid: str) -> providers.ProviderKey | None:
        """The provider's key ``kid``, fetching first when due or (rate-limited) when it is unknown."""
        entry = self._entries.get(name)
        if entry is None or entry.spec != spec:  # a changed spec starts afresh
            entry = self._entries[name] = _Entry(spec)
        found = self._lookup(entry, kid)
        if found is not None and not self._due(entry):
            return found
        async with entry.lock:
            found = self._lookup(entry, kid)
            now = self._clock()
            due = self._due(entry)
            retry = entry.attempted_at is None or now - entry.attempted_at >= providers.FAILED_RETRY
            if (due and retry) or (
                found is None and providers.may_fetch_for_unknown_kid(entry.attempted_at, now, self._refetch)
            ):
                await self._fetch(entry, now)
                found = self._lookup(entry, kid)
        return found

    def _lookup(self, entry: _Entry, kid: str) -> providers.ProviderKey | None:
        return entry.keys.keys.get(kid) if entry.keys is not None else None

    def _due(self, entry: _Entry) -> bool:
        refresh = datetime.timedelta(seconds=entry.spec.refresh_seconds)
        return self._clock() >= providers.refresh_due(entry.fetched_at, refresh, self._clock())

    async def _fetch(self, entry: _Entry, now: datetime.datetime) -> None:
        entry.attempted_at = now
        self.fetches += 1
        try:
            entry.keys = await fetch(self._session, entry.spec)
        except FetchError:
            if entry.keys is None:
                raise
            return  # keep the keys we have until the next attempt
        entry.fetched_at = now

    def forget(self, keep: set[str]) -> None:
        """Drop the entries of providers that no longer exist."""
        for name in set(self._entries) - keep:
            del self._entries[name]
