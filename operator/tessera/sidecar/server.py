"""The sidecar process: an auth-request endpoint, an optional reverse proxy, egress routes, the live
bundle channel, probes and metrics, on the sidecar's own small HTTP layer (:mod:`httpserver`,
:mod:`httpclient`: asyncio and httptools, no aiohttp; see docs/benchmarks.md for why).

- ``/auth`` (and anything under it) answers auth subrequests from nginx ``auth_request``, Traefik
  ``forwardAuth`` and Envoy ``ext_authz`` (HTTP): the original method and URI come from
  ``X-Original-Method``/``X-Original-URI`` (nginx), ``X-Forwarded-Method``/``X-Forwarded-Uri``
  (Traefik), or the request itself below ``/auth`` (Envoy with ``path_prefix: /auth``); the caller's
  address from ``X-Real-IP`` or the last ``X-Forwarded-For`` hop (the proxy's own view). It listens
  on loopback by default, because only the local proxy may vouch for those headers.
- ``--proxy-listen`` + ``--upstream``: every request is decided, stripped of any identity headers
  the caller sent, given the verified ones, and streamed to the app over kept-alive connections.
- ``--egress``: local ports through which the app calls configured upstreams with the Pod's token
  (:mod:`tessera.sidecar.egress`).
- ``/healthz`` (alive), ``/readyz`` (ready once a valid trust bundle and the rules are loaded, and an
  egress token is held; JSON detail: the bundle's sequence, source and age, the mounted file, the
  channel, egress), ``/metrics`` (Prometheus).

Trust bundles come from two paths, each offered to :meth:`State.offer`: the mounted folder, polled
(kubelet replaces the files by swapping a symlink, so a changed file is a new inode), the start-up
source and the fallback; and the live channel (:mod:`tessera.sidecar.channel`). A bundle is taken
only when its sequence is greater than the one in use, so neither path can take the sidecar back;
one that does not parse is refused and the last good one stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tessera import errors, trustbundle
from tessera.sidecar import (
    channel,
    decide,
    defaults,
    egress,
    forward,
    httpclient,
    httpserver,
    metrics,
    rules,
    trust,
    verify,
)

logger = logging.getLogger("tessera.sidecar")
BUNDLE_FILE = trustbundle.BUNDLE_KEY
# Never passed on from the caller to the app: hop-by-hop headers, Host (the app's own), and anything
# that looks like a verified identity, which only the sidecar may assert.
IDENTITY = frozenset(h.lower() for h in (*decide.IDENTITY_HEADERS, decide.REASON_HEADER))
AUTH_PATH = "/auth"


@dataclasses.dataclass(frozen=True)
class Config:
    bundle_dir: Path
    namespace: str
    audiences: frozenset[str]
    rules_file: Path
    listen: tuple[str, int] = (defaults.LISTEN_HOST, defaults.LISTEN_PORT)
    proxy_listen: tuple[str, int] | None = None
    upstream: str | None = None
    leeway: int = defaults.LEEWAY_SECONDS
    max_token_bytes: int = defaults.MAX_TOKEN_BYTES
    max_lifetime: int = defaults.MAX_LIFETIME_SECONDS
    reload_seconds: float = defaults.RELOAD_SECONDS
    verification: bool = True  # False: egress only (no bundle, no rules, no /auth)
    issuer_url: str | None = None  # the issuer service: the live channel, and egress token exchange
    issuer_ca: Path | None = None  # default: the CA the operator puts beside the mounted bundle
    kubernetes_token_file: Path | None = None  # the Pod's projected Kubernetes token (audience: the issuer's)
    channel: bool = True  # subscribe to the live bundle channel (with issuer_url and kubernetes_token_file)
    channel_wait: int = defaults.CHANNEL_WAIT_SECONDS
    egress: tuple[egress.Route, ...] = ()
    token_file: Path | None = None  # egress: the mounted Tessera token; else exchanged
    egress_audiences: tuple[str, ...] = ()

    def policy(self) -> verify.Policy:
        return verify.Policy(
            audiences=self.audiences,
            leeway=self.leeway,
            max_token_bytes=self.max_token_bytes,
            max_lifetime=self.max_lifetime,
        )

    @property
    def channel_enabled(self) -> bool:
        return (
            self.verification
            and self.channel
            and self.issuer_url is not None
            and self.kubernetes_token_file is not None
        )

    def ca_file(self) -> Path:
        """The issuer's CA: given, or the one the operator puts beside the mounted bundle (read when it
        exists; without one, the system's trust store decides)."""
        return self.issuer_ca if self.issuer_ca is not None else self.bundle_dir / trustbundle.ISSUER_CA_KEY


def _file_id(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()  # follows kubelet's ..data symlink to the current file
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class State:
    """What the sidecar decides with. The verifier is replaced whole when a bundle is taken, so a
    request sees one consistent view."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.verifier: verify.Verifier | None = None
        self.rules: tuple[rules.Rule, ...] | None = None
        self.metrics = metrics.Metrics()
        self.bundle_id: tuple[int, int, int, int] | None = None
        self.rules_id: tuple[int, int, int, int] | None = None
        self.bundle_changed_at: float | None = None
        self.bundle_source: str | None = None
        self.bundle_valid = False
        self.last_error: str | None = None
        self.channel: channel.Channel | None = None
        self.egress: egress.Egress | None = None
        self._retired_hits = 0
        self._retired_misses = 0

    @property
    def ready(self) -> bool:
        verifying = not self.config.verification or (self.verifier is not None and self.rules is not None)
        return verifying and (self.egress is None or self.egress.ready)

    def sequence(self) -> int:
        v = self.verifier
        return (v.bundle.sequence or 0) if v is not None else 0

    def cache_counts(self) -> tuple[int, int]:
        v = self.verifier
        return (self._retired_hits + (v.hits if v else 0), self._retired_misses + (v.misses if v else 0))

    def _refuse(self, what: str, message: str) -> None:
        self.last_error = f"{what}: {message}"
        keeping = "kept the last good one" if self.ready else "not ready until a valid one arrives"
        logger.warning("Refused the %s (%s): %s", what, keeping, message)

    def offer(self, raw: bytes, source: str) -> str:
        """A bundle from ``source`` (mount, channel): installed, same, older (ignored) or refused."""
        try:
            bundle = trust.parse(raw)
        except errors.BundleError as exc:
            self.metrics.bundle_reload_errors += 1
            self._refuse(f"trust bundle from the {source}", str(exc))
            outcome = "refused"
        else:
            current = self.verifier.bundle if self.verifier is not None else None
            if current is not None and current.digest == bundle.digest:
                outcome = "same"
            elif current is not None and not trustbundle.newer(bundle.sequence, current.sequence):
                outcome = "older"
            else:
                self._install(bundle, source)
                outcome = "installed"
        self.metrics.count(self.metrics.bundles, source, outcome)
        return outcome

    def reload(self) -> None:
        """Offer the mounted bundle and load the rules if their files changed since the last look."""
        if self.egress is not None and isinstance(self.egress.tokens, egress.FileTokens):
            self.egress.tokens.reload()
        if not self.config.verification:
            return
        bundle_path = self.config.bundle_dir / BUNDLE_FILE
        current = _file_id(bundle_path)
        if current is not None and current != self.bundle_id:
            self.bundle_id = current
            try:
                raw = bundle_path.read_bytes()
            except OSError as exc:
                self.bundle_valid = False
                self._refuse("trust bundle", f"cannot read {bundle_path}: {exc.strerror}")
            else:
                self.bundle_valid = self.offer(raw, "mount") != "refused"
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

    def _install(self, bundle: trust.Bundle, source: str) -> None:
        old = self.verifier
        if old is not None:
            self._retired_hits += old.hits
            self._retired_misses += old.misses
        self.verifier = verify.Verifier(bundle, self.config.policy())
        self.bundle_changed_at = time.time()
        self.bundle_source = source
        self.metrics.bundle_reloads += 1
        logger.info(
            "Loaded the trust bundle %s (sequence %s, from the %s): %d keys, %d revocations, "
            "%d principals with grants in %s",
            bundle.digest[:12],
            bundle.sequence,
            source,
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
        detail: dict[str, Any] = {"ready": self.ready}
        if self.config.verification:
            bundle = None
            if v is not None:
                b = v.bundle
                bundle = {
                    "digest": b.digest[:12],
                    "keys": len(b.keys),
                    "sequence": b.sequence,
                    "source": self.bundle_source,
                }
            detail.update(
                bundle=bundle,
                bundleAgeSeconds=None if changed is None else round(time.time() - changed, 1),
                mountedBundleValid=self.bundle_valid,
                rules=None if self.rules is None else len(self.rules),
                lastError=self.last_error,
                channel=self.channel.status() if self.channel is not None else {"state": "off"},
            )
        if self.egress is not None:
            detail["egress"] = self.egress.status()
        return detail

    def gauges(self) -> metrics.Gauges:
        held = self.egress.tokens.held if self.egress is not None else None
        return metrics.Gauges(
            cache=self.cache_counts(),
            bundle_changed_at=self.bundle_changed_at,
            bundle_valid=self.bundle_valid,
            bundle_sequence=self.sequence(),
            channel_up=self.channel.up if self.channel is not None else None,
            token_expires_at=held.expires_at if held is not None else None,
            egress=self.egress is not None,
        )


def _json(status: int, body: dict[str, Any], headers: list[tuple[str, str]] | None = None) -> httpserver.Response:
    return httpserver.json_response(status, json.dumps(body).encode(), headers or [])


def _refusal(decision: decide.Decision) -> httpserver.Response:
    return _json(decision.status, {"reason": decision.reason}, list(decision.headers().items()))


def _forwarded_source(request: httpserver.Request) -> str | None:
    real = request.get("x-real-ip")
    if real:
        return real.strip()
    hops = [h.strip() for h in ",".join(request.all("x-forwarded-for")).split(",") if h.strip()]
    return hops[-1] if hops else request.peer


def _original(request: httpserver.Request) -> tuple[str, str]:
    method = request.get("x-original-method") or request.get("x-forwarded-method")
    uri = request.get("x-original-uri") or request.get("x-forwarded-uri")
    if uri is None:  # Envoy ext_authz: the original path follows the prefix
        rest = request.target[len(AUTH_PATH) :]
        uri = rest if rest.startswith("/") else "/" + rest
    return (method or request.method), uri


_OK = httpserver.Response(200, [("Content-Type", "text/plain; charset=utf-8")], b"ok\n")


def admin_handler(state: State) -> httpserver.Handler:
    """``/auth``, ``/healthz``, ``/readyz``, ``/metrics`` on ``--listen``."""

    async def handle(request: httpserver.Request) -> httpserver.Response:
        path = request.path
        if state.config.verification and (path == AUTH_PATH or path.startswith(AUTH_PATH + "/")):
            method, uri = _original(request)
            decision = state.decide(method, uri, request.all("authorization"), _forwarded_source(request))
            if decision.allowed:
                return httpserver.Response(200, list(decision.headers().items()))
            return _refusal(decision)
        if path not in ("/healthz", "/readyz", "/metrics"):
            return _json(404, {"reason": "not_found"})
        if request.method not in ("GET", "HEAD"):
            return _json(405, {"reason": "method_not_allowed"}, [("Allow", "GET, HEAD")])
        if path == "/healthz":
            return _OK
        if path == "/readyz":
            return _json(200 if state.ready else 503, state.readiness())
        text = state.metrics.render(state.gauges())
        return httpserver.text_response(200, text, "text/plain; version=0.0.4; charset=utf-8")

    return handle


def proxy_handler(state: State, pool: httpclient.Pool) -> httpserver.Handler:
    async def handle(request: httpserver.Request) -> httpserver.Response:
        decision = state.decide(request.method, request.target, request.all("authorization"), request.peer)
        if not decision.allowed:
            return _refusal(decision)
        skip = forward.hop_by_hop(request.headers) | IDENTITY | {"host", "x-forwarded-for"}
        headers = [(n, v) for n, v in request.headers if n.lower() not in skip]
        headers += [(k, v) for k, v in decision.headers().items() if k != decide.REASON_HEADER]
        headers.append(("X-Forwarded-For", request.peer or ""))
        try:
            return await forward.relay(pool, request, headers)
        except (httpclient.UpstreamError, OSError) as exc:
            state.metrics.upstream_errors += 1
            return forward.unavailable(f"The app ({request.method} {request.path[:200]})", exc)

    return handle


async def _poll(state: State, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            state.reload()
        except Exception:  # the poller must outlive any surprise; the request path never depends on it
            logger.exception("Unexpected error while reloading; will try again")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), state.config.reload_seconds)


def _egress(config: Config, state: State) -> egress.Egress | None:
    if not config.egress:
        return None
    tokens: egress.Tokens
    if config.token_file is not None:
        tokens = egress.FileTokens(config.token_file, state.metrics)
    else:
        assert config.issuer_url is not None and config.kubernetes_token_file is not None
        tokens = egress.ExchangedTokens(
            config.issuer_url, config.ca_file(), config.kubernetes_token_file, config.egress_audiences, state.metrics
        )
    return egress.Egress(config.egress, tokens, state.metrics)


async def serve(config: Config, started: Callable[[State], Awaitable[None]] | None = None) -> None:
    """Run until SIGTERM/SIGINT."""
    state = State(config)
    state.egress = _egress(config, state)
    state.reload()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    servers: list[tuple[httpserver.Handler, tuple[str, int], str]] = [
        (admin_handler(state), config.listen, "auth, probes, metrics" if config.verification else "probes, metrics")
    ]
    app_pool = None
    if config.verification and config.proxy_listen is not None and config.upstream is not None:
        app_pool = httpclient.Pool(httpclient.Origin.parse(config.upstream), limit=256, keepalive=30.0)
        servers.append((proxy_handler(state, app_pool), config.proxy_listen, f"proxy to {config.upstream}"))
    if state.egress is not None:
        servers += [(state.egress.handler(r), r.listen, f"egress to {r.name}") for r in state.egress.routes]
    running = []
    for handler, (host, port), serves in servers:
        server = httpserver.Server(handler)
        await server.start(host, port)
        running.append(server)
        logger.info("Listening on %s:%d (%s)", host, port, serves)
    tasks = [asyncio.create_task(_poll(state, stop))]
    if config.channel_enabled:
        assert config.issuer_url is not None and config.kubernetes_token_file is not None
        state.channel = channel.Channel(
            config.issuer_url, config.namespace, config.kubernetes_token_file, config.ca_file(),
            state.offer, state.sequence, state.metrics, config.channel_wait,
        )  # fmt: skip
        tasks.append(asyncio.create_task(state.channel.run(stop)))
    if state.egress is not None and isinstance(state.egress.tokens, egress.ExchangedTokens):
        tasks.append(asyncio.create_task(state.egress.tokens.run(stop)))
    if started is not None:
        await started(state)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in running:
            await server.stop()
        for closing in (app_pool, state.channel, state.egress):
            if closing is not None:
                await closing.close()


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
