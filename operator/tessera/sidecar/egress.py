"""Egress: the calling side of the sidecar, so an app never holds (or caches past its expiry) a token.

Each configured route is a local port and one upstream origin: ``--egress 127.0.0.1:9001=http://ledger.shop.svc``.
The app calls ``http://127.0.0.1:9001/entries/1`` without any token; the sidecar passes the request
to that upstream, and only there, with the Pod's current Tessera token in ``Authorization`` (a token
the app sent is replaced). A request target that is not a path (``GET http://elsewhere/``, a proxy's
absolute form) is refused: the destination is the route's, never the request's.

Where the token comes from:

- :class:`FileTokens`: the token Secret the operator keeps current (``--token-file``), re-read
  whenever kubelet swaps the mounted file; a token past its expiry is never sent.
- :class:`ExchangedTokens`: the Pod's projected Kubernetes token exchanged at the issuer (RFC 8693,
  ``--kubernetes-token-file`` + ``--issuer-url``), again at 80 % of each token's life (a little
  jitter spreads Pods), and retried with backoff on failure while the held token is still valid.

Tokens are never logged; their expiry is in ``/readyz`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import random
import ssl
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from tessera import errors, protocol
from tessera.sidecar import channel, forward, httpclient, httpserver, metrics

log = logging.getLogger("tessera.sidecar")

REFRESH_AT = 0.8  # of a token's lifetime
REFRESH_JITTER = 0.05
DROPPED = frozenset({"host", "authorization", "proxy-authorization"})


@dataclasses.dataclass(frozen=True)
class Route:
    listen: tuple[str, int]
    upstream: httpclient.Origin

    @property
    def name(self) -> str:
        return str(self.upstream)


def parse_route(text: str, parse_listen: Callable[[str], tuple[str, int]]) -> Route:
    """``host:port=http(s)://upstream[:port]``."""
    listen, sep, upstream = text.partition("=")
    if not sep:
        raise errors.ConfigError(f"--egress {text!r}: expected LISTEN=URL, e.g. 127.0.0.1:9001=http://ledger.shop.svc")
    try:
        origin = httpclient.Origin.parse(upstream.strip())
    except ValueError as exc:
        raise errors.ConfigError(f"--egress {text!r}: {exc}") from exc
    return Route(parse_listen(listen.strip()), origin)


class Held(NamedTuple):
    token: str
    issued_at: float
    expires_at: float


def lifetime(token: str) -> tuple[float, float] | None:
    """(iat, exp) read from the token without verifying it (only to know when to renew it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp, iat = claims["exp"], claims.get("iat", claims["exp"])
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, iat)):
            return None
        return float(iat), float(exp)
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error, UnicodeDecodeError):
        return None


def _held(token: str) -> Held | None:
    found = lifetime(token)
    return Held(token, *found) if found is not None else None


class FileTokens:
    """The mounted token Secret; :meth:`reload` (called by the sidecar's poller) re-reads it when it changed."""

    source = "file"

    def __init__(self, path: Path, counters: metrics.Metrics) -> None:
        self.path, self._metrics = path, counters
        self.held: Held | None = None
        self.last_error: str | None = None
        self._file: tuple[int, int, int] | None = None

    def reload(self) -> None:
        try:
            st = self.path.stat()
            found = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            found = None
        if found == self._file:
            return
        self._file = found
        if found is None:
            self._fail(f"{self.path} is gone")
            return
        try:
            held = _held(self.path.read_text().strip())
        except OSError as exc:
            self._fail(f"cannot read {self.path}: {exc.strerror}")
            return
        if held is None:
            self._fail(f"{self.path} holds no token with an expiry")
            return
        if self.held is None or held.token != self.held.token:
            self._metrics.token_refreshes += 1
            log.info("Took up the token in %s (expires in %.0f s)", self.path, held.expires_at - time.time())
        self.held, self.last_error = held, None

    def _fail(self, message: str) -> None:
        self.held, self.last_error = None, message  # withdrawn (a disabled account): nothing to send
        self._metrics.token_failures += 1
        log.warning("No token for egress: %s", message)

    def current(self, now: float) -> str | None:
        held = self.held
        return held.token if held is not None and now < held.expires_at else None


class ExchangedTokens:
    """A Tessera token got by exchanging the Pod's Kubernetes token at the issuer, kept fresh by :meth:`run`."""

    source = "exchange"

    def __init__(
        self,
        issuer_url: str,
        ca_file: Path | None,
        kubernetes_token_file: Path,
        audiences: tuple[str, ...],
        counters: metrics.Metrics,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.origin = httpclient.Origin.parse(issuer_url)
        self.ca_file, self.kubernetes_token_file, self.audiences = ca_file, kubernetes_token_file, audiences
        self._metrics, self._rng = counters, rng
        self.held: Held | None = None
        self.last_error: str | None = None
        self.failures = 0

    def _pool(self) -> httpclient.Pool:
        context = ssl.create_default_context()
        if self.ca_file is not None and self.ca_file.exists():
            context.load_verify_locations(cafile=str(self.ca_file))
        return httpclient.Pool(self.origin, limit=1, keepalive=5.0, ssl_context=context)

    async def exchange(self) -> Held:
        subject = self.kubernetes_token_file.read_text().strip()
        form = [
            ("grant_type", protocol.TOKEN_EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", protocol.TYPE_JWT),
            *(("audience", a) for a in self.audiences),
        ]
        pool = self._pool()
        try:
            headers = [("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json")]
            body = urllib.parse.urlencode(form).encode()
            answer = await pool.request("POST", protocol.TOKEN_PATH, headers, body, head_seconds=15.0)
            raw = await answer.read(65536)
        finally:
            await pool.close()
        try:
            doc: Any = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            doc = {}
        if answer.status != 200 or not isinstance(doc.get("access_token"), str):
            why = doc.get("error_description") or doc.get("error") or ""
            raise httpclient.UpstreamError(f"the issuer answered {answer.status}: {str(why)[:200]}")
        held = _held(doc["access_token"])
        if held is None:
            raise httpclient.UpstreamError("the issuer's token has no expiry")
        return held

    def refresh_at(self, held: Held) -> float:
        life = held.expires_at - held.issued_at
        return held.issued_at + life * (REFRESH_AT - REFRESH_JITTER * self._rng())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            held = self.held
            due = 0.0 if held is None else self.refresh_at(held) - time.time()
            if due > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), due)
                continue
            try:
                fresh = await self.exchange()
            except (OSError, httpclient.UpstreamError) as exc:
                self.failures += 1
                self._metrics.token_failures += 1
                self.last_error = str(exc)
                log.warning("Could not exchange the Kubernetes token at %s: %s", self.origin, exc)
                delay = channel.backoff(self.failures, self._rng)
                if held is not None:  # never wait past the held token's expiry
                    delay = min(delay, max(1.0, held.expires_at - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            self.held, self.failures, self.last_error = fresh, 0, None
            self._metrics.token_refreshes += 1
            log.info(
                "Exchanged the Kubernetes token for a Tessera token (expires in %.0f s)", fresh.expires_at - time.time()
            )

    def current(self, now: float) -> str | None:
        held = self.held
        return held.token if held is not None and now < held.expires_at else None


Tokens = FileTokens | ExchangedTokens


class Egress:
    def __init__(self, routes: tuple[Route, ...], tokens: Tokens, counters: metrics.Metrics) -> None:
        self.routes, self.tokens, self._metrics = routes, tokens, counters
        self._pools = {route.name: httpclient.Pool(route.upstream) for route in routes}

    def handler(self, route: Route) -> httpserver.Handler:
        pool = self._pools[route.name]

        async def handle(request: httpserver.Request) -> httpserver.Response:
            if not request.target.startswith("/"):
                body = b'{"reason": "not_a_path", "detail": "call a path: the upstream is fixed by the route"}'
                return httpserver.json_response(400, body)
            token = self.tokens.current(time.time())
            if token is None:
                self._metrics.count(self._metrics.egress_requests, route.name, "no_token")
                return httpserver.json_response(503, b'{"reason": "no_token"}', [("Retry-After", "1")])
            skip = forward.hop_by_hop(request.headers) | DROPPED
            headers = [(n, v) for n, v in request.headers if n.lower() not in skip]
            headers.append(("Authorization", f"Bearer {token}"))
            try:
                answer = await forward.relay(pool, request, headers)
            except (httpclient.UpstreamError, OSError) as exc:
                self._metrics.count(self._metrics.egress_requests, route.name, "upstream_unavailable")
                return forward.unavailable(f"{route.name} ({request.method} {request.path[:200]})", exc)
            self._metrics.count(self._metrics.egress_requests, route.name, "passed")
            return answer

        return handle

    @property
    def ready(self) -> bool:
        return self.tokens.current(time.time()) is not None

    def status(self) -> dict[str, Any]:
        held, now = self.tokens.held, time.time()
        return {
            "tokenSource": self.tokens.source,
            "tokenExpiresInSeconds": None if held is None else round(held.expires_at - now, 1),
            "lastError": self.tokens.last_error,
            "upstreams": {f"{host}:{port}": r.name for r in self.routes for host, port in [r.listen]},
        }

    async def close(self) -> None:
        for pool in self._pools.values():
            await pool.close()
