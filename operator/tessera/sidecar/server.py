"""The sidecar process: an auth-request endpoint, an optional reverse proxy, probes and metrics.

- ``/auth`` (and anything under it) answers auth subrequests from nginx ``auth_request``, Traefik
  ``forwardAuth`` and Envoy ``ext_authz`` (HTTP): the original method and URI come from
  ``X-Original-Method``/``X-Original-URI`` (nginx), ``X-Forwarded-Method``/``X-Forwarded-Uri``
  (Traefik), or the request itself below ``/auth`` (Envoy with ``path_prefix: /auth``); the caller's
  address from ``X-Real-IP`` or the last ``X-Forwarded-For`` hop (the proxy's own view). It listens
  on loopback by default, because only the local proxy may vouch for those headers.
- ``--proxy-listen`` + ``--upstream``: every request is decided, stripped of any identity headers
  the caller sent, given the verified ones, and streamed to the app over kept-alive connections.
- ``/healthz`` (alive), ``/readyz`` (ready once a valid trust bundle and the rules are loaded; JSON
  detail with the bundle's age and the last refused reload), ``/metrics`` (Prometheus).

The trust bundle folder is polled (kubelet replaces the mounted files by swapping a symlink, so a
changed file is a new inode); a bundle that does not parse is refused and the last good one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, hdrs, web

from tessera import errors
from tessera.sidecar import decide, metrics, rules, trust, verify

logger = logging.getLogger("tessera.sidecar")
BUNDLE_FILE = "bundle.json"
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade",
    )
)  # fmt: skip
# Never passed on from the caller: hop-by-hop headers, Host (the upstream's own), and anything that
# looks like a verified identity, which only the sidecar may assert.
STRIPPED = HOP_BY_HOP | {"host"} | {h.lower() for h in (*decide.IDENTITY_HEADERS, decide.REASON_HEADER)}
AUTH_PATH = "/auth"
# Headers up to 64 KiB reach the verifier, so an oversized token gets its 401 and reason, not a 400.
LIMITS = {"max_field_size": 65536, "max_line_size": 65536}


@dataclasses.dataclass(frozen=True)
class Config:
    bundle_dir: Path
    namespace: str
    audiences: frozenset[str]
    rules_file: Path
    listen: tuple[str, int] = ("127.0.0.1", 8181)
    proxy_listen: tuple[str, int] | None = None
    upstream: str | None = None
    leeway: int = 60
    max_token_bytes: int = 8192
    max_lifetime: int = 86400
    reload_seconds: float = 2.0

    def policy(self) -> verify.Policy:
        return verify.Policy(
            audiences=self.audiences,
            leeway=self.leeway,
            max_token_bytes=self.max_token_bytes,
            max_lifetime=self.max_lifetime,
        )


def _file_id(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()  # follows kubelet's ..data symlink to the current file
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class State:
    """What the sidecar decides with; replaced whole, never edited, so a request sees one consistent view."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.verifier: verify.Verifier | None = None
        self.rules: tuple[rules.Rule, ...] | None = None
        self.metrics = metrics.Metrics()
        self.bundle_id: tuple[int, int, int, int] | None = None
        self.rules_id: tuple[int, int, int, int] | None = None
        self.bundle_changed_at: float | None = None
        self.bundle_valid = False
        self.last_error: str | None = None
        self._retired_hits = 0
        self._retired_misses = 0

    @property
    def ready(self) -> bool:
        return self.verifier is not None and self.rules is not None

    def cache_counts(self) -> tuple[int, int]:
        v = self.verifier
        return (self._retired_hits + (v.hits if v else 0), self._retired_misses + (v.misses if v else 0))

    def _refuse(self, what: str, message: str) -> None:
        self.last_error = f"{what}: {message}"
        keeping = "kept the last good one" if self.ready else "not ready until a valid one arrives"
        logger.warning("Refused the %s (%s): %s", what, keeping, message)

    def reload(self) -> None:
        """Load the bundle and rules files if they changed since the last look."""
        bundle_path = self.config.bundle_dir / BUNDLE_FILE
        current = _file_id(bundle_path)
        if current is not None and current != self.bundle_id:
            self.bundle_id = current
            try:
                bundle = trust.parse(bundle_path.read_bytes())
            except (OSError, trust.BundleError) as exc:
                self.bundle_valid = False
                self.metrics.bundle_reload_errors += 1
                self._refuse("trust bundle", str(exc))
            else:
                self.bundle_valid = True
                if self.verifier is None or self.verifier.bundle.digest != bundle.digest:
                    self._install(bundle)
        elif current is None and self.bundle_id is not None:
            self.bundle_id, self.bundle_valid = None, False
            self._refuse("trust bundle", f"{bundle_path} is gone")
        rules_current = _file_id(self.config.rules_file)
        if rules_current is not None and rules_current != self.rules_id:
            self.rules_id = rules_current
            try:
                self.rules = rules.load(self.config.rules_file)
                logger.info("Loaded %d rules from %s", len(self.rules), self.config.rules_file)
            except errors.ConfigError as exc:
                self._refuse("rules", str(exc))

    def _install(self, bundle: trust.Bundle) -> None:
        old = self.verifier
        if old is not None:
            self._retired_hits += old.hits
            self._retired_misses += old.misses
        self.verifier = verify.Verifier(bundle, self.config.policy())
        self.bundle_changed_at = time.time()
        self.metrics.bundle_reloads += 1
        logger.info(
            "Loaded the trust bundle %s: %d keys, %d revocations, %d principals with grants in %s",
            bundle.digest[:12],
            len(bundle.keys),
            len(bundle.revocations),
            len(bundle.grants),
            self.config.namespace,
        )

    def decide(self, method: str, target: str, authorization: list[str], source: str | None) -> decide.Decision:
        started = time.perf_counter()
        if self.verifier is None or self.rules is None:
            decision = decide.unauthenticated("not_ready", "invalid_token")
        else:
            try:
                decision = decide.decide(self.verifier, self.rules, method, target, authorization, source, time.time())
            except Exception:  # a bug must deny, never answer 500 or let anyone through
                logger.exception("Unexpected error deciding %s %s; denied", method, target.split("?", 1)[0][:200])
                decision = decide.unauthenticated("verification_error", "invalid_token")
        self.metrics.decided(decision.status, decision.reason, time.perf_counter() - started)
        return decision

    def readiness(self) -> dict[str, Any]:
        v, changed = self.verifier, self.bundle_changed_at
        return {
            "ready": self.ready,
            "bundle": None if v is None else {"digest": v.bundle.digest[:12], "keys": len(v.bundle.keys)},
            "bundleAgeSeconds": None if changed is None else round(time.time() - changed, 1),
            "mountedBundleValid": self.bundle_valid,
            "rules": None if self.rules is None else len(self.rules),
            "lastError": self.last_error,
        }


def _refusal(decision: decide.Decision) -> web.Response:
    return web.json_response({"reason": decision.reason}, status=decision.status, headers=decision.headers())


def _forwarded_source(request: web.Request) -> str | None:
    real = request.headers.get("X-Real-IP")
    if real:
        return real.strip()
    hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",") if h.strip()]
    return hops[-1] if hops else request.remote


def _original(request: web.Request) -> tuple[str, str]:
    method = request.headers.get("X-Original-Method") or request.headers.get("X-Forwarded-Method")
    uri = request.headers.get("X-Original-URI") or request.headers.get("X-Forwarded-Uri")
    if uri is None:  # Envoy ext_authz: the original path follows the prefix
        rest = request.raw_path[len(AUTH_PATH) :]
        uri = rest if rest.startswith("/") else "/" + rest
    return (method or request.method), uri


def auth_app(state: State) -> web.Application:
    async def auth(request: web.Request) -> web.Response:
        method, uri = _original(request)
        decision = state.decide(method, uri, request.headers.getall(hdrs.AUTHORIZATION, []), _forwarded_source(request))
        if decision.allowed:
            return web.Response(status=200, headers=decision.headers())
        return _refusal(decision)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        return web.json_response(state.readiness(), status=200 if state.ready else 503)

    async def metrics_(_: web.Request) -> web.Response:
        text = state.metrics.render(state.cache_counts(), state.bundle_changed_at, state.bundle_valid)
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    app = web.Application(handler_args=LIMITS)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_)
    app.router.add_route("*", AUTH_PATH, auth)
    app.router.add_route("*", AUTH_PATH + "/{rest:.*}", auth)
    return app


def proxy_app(state: State, upstream: str, session: Callable[[], ClientSession]) -> web.Application:
    base = upstream.rstrip("/")

    async def forward(request: web.Request) -> web.StreamResponse:
        decision = state.decide(
            request.method, request.raw_path, request.headers.getall(hdrs.AUTHORIZATION, []), request.remote
        )
        if not decision.allowed:
            return _refusal(decision)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in STRIPPED}
        headers.update({k: v for k, v in decision.headers().items() if k != decide.REASON_HEADER})
        headers["X-Forwarded-For"] = request.remote or ""
        body = request.content if request.body_exists else None
        try:
            async with session().request(
                request.method, base + request.raw_path, headers=headers, data=body, allow_redirects=False
            ) as answer:
                response = web.StreamResponse(status=answer.status, reason=answer.reason)
                for name, value in answer.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        response.headers.add(name, value)
                await response.prepare(request)
                async for chunk in answer.content.iter_chunked(65536):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (ClientError, TimeoutError, ValueError) as exc:
            state.metrics.upstream_errors += 1
            logger.warning("The app did not answer %s %s: %s", request.method, request.path, type(exc).__name__)
            return web.json_response({"reason": "upstream_unavailable"}, status=502)

    app = web.Application(client_max_size=0, handler_args=LIMITS)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def _poll(state: State, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            state.reload()
        except Exception:  # the poller must outlive any surprise; the request path never depends on it
            logger.exception("Unexpected error while reloading; will try again")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), state.config.reload_seconds)


async def serve(config: Config, started: Callable[[State], Awaitable[None]] | None = None) -> None:
    """Run until SIGTERM/SIGINT."""
    state = State(config)
    state.reload()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sessions: list[ClientSession] = []

    def session() -> ClientSession:
        if not sessions:
            connector = TCPConnector(limit=256, keepalive_timeout=30)
            sessions.append(
                ClientSession(connector=connector, timeout=ClientTimeout(total=None, connect=5), auto_decompress=False)
            )
        return sessions[0]

    apps = [(auth_app(state), config.listen, "auth, probes, metrics")]
    if config.proxy_listen is not None and config.upstream is not None:
        apps.append((proxy_app(state, config.upstream, session), config.proxy_listen, "proxy"))
    runners = []
    for app, (host, port), serves in apps:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=1024).start()
        runners.append(runner)
        logger.info("Listening on %s:%d (%s)", host, port, serves)
    poller = asyncio.create_task(_poll(state, stop))
    if started is not None:
        await started(state)
    try:
        await stop.wait()
    finally:
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        for runner in runners:
            await runner.cleanup()
        for s in sessions:
            await s.close()


def run(config: Config) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(name)-16s [%(levelname)-7s] %(message)s")
    logger.info(
        "Tessera sidecar for namespace %s, audiences %s (pid %d)",
        config.namespace,
        sorted(config.audiences),
        os.getpid(),
    )
    asyncio.run(serve(config))
    return 0


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError as exc:
        raise errors.ConfigError(f"listen address {text!r}: expected host:port") from exc
    if not 0 < number < 65536:
        raise errors.ConfigError(f"listen address {text!r}: port out of range")
    return (host.strip("[]") or "0.0.0.0", number)  # noqa: S104 (an empty host means every interface, as asked)
