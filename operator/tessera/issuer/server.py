"""The issuer's HTTPS server: discovery, JWKS, the token endpoint, probes.

- ``GET /.well-known/openid-configuration``: OpenID Provider metadata naming the JWKS and token endpoint.
- ``GET /jwks``: every issuer key that is published (the next key before it signs, the previous one
  until its tokens expired), each with ``kid``, ``use: sig`` and ``alg``.
- ``POST /token``: form-encoded (RFC 6749 section 3.2), at most :data:`MAX_BODY_BYTES`; JSON
  answers with ``Cache-Control: no-store``; refusals are 400 with an RFC error code (413 for an
  oversized body, 405 for another method), failures of the API server or a provider 503. Never 500.
- ``GET /bundles/<namespace>?after=<sequence>&wait=<seconds>``: the live trust bundle channel
  (:mod:`tessera.protocol`): a Pod's Kubernetes token reads its own namespace's bundle as soon as it
  is newer than ``after``, else 304 after ``wait``; 400/401/403/404 with a reason, 503 with
  Retry-After while starting or shedding load.
- ``GET /healthz`` (alive) and ``/readyz`` (every cache listed, an issuer key known).

Every replica serves alone: all state comes from the API server, and the one shared write, an
assertion's jti, is an atomic create there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import hdrs, web

from tessera import errors, protocol
from tessera.core import channel, clock, exchange, issuer, settings
from tessera.issuer import bundles, caches, grants
from tessera.kube import client, issuing
from tessera.remote import providerkeys

log = logging.getLogger("tessera.issuer")
MAX_BODY_BYTES = 16384
MAX_FIELDS = 32
FORM = "application/x-www-form-urlencoded"
SWEEP_SECONDS = 300.0
CONTEXT: web.AppKey[grants.Context] = web.AppKey("context", grants.Context)
HUB: web.AppKey[bundles.Hub] = web.AppKey("hub", bundles.Hub)
REVIEWS: web.AppKey[bundles.Reviews] = web.AppKey("reviews", bundles.Reviews)


@dataclasses.dataclass(frozen=True)
class Config:
    listen: tuple[str, int]
    tls_cert: Path | None
    tls_key: Path | None


def _json(body: dict[str, Any], status: int = 200, **headers: str) -> web.Response:
    return web.json_response(
        body, status=status, headers={"Cache-Control": "no-store", "Pragma": "no-cache", **headers}
    )


def _refusal(refusal: exchange.Refusal, **headers: str) -> web.Response:
    return _json(refusal.body(), refusal.status, **headers)


async def discovery(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    body = exchange.discovery(ctx.cfg, ctx.caches.keyset())
    return web.json_response(body, headers={"Cache-Control": "public, max-age=60"})


async def jwks(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    return web.json_response(issuer.jwks(ctx.caches.keyset()), headers={"Cache-Control": "public, max-age=60"})


def parse_form(body: bytes) -> list[tuple[str, str]]:
    try:
        return urllib.parse.parse_qsl(
            body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(body), max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise exchange.Refusal(
            exchange.INVALID_REQUEST, "the body is not a form (application/x-www-form-urlencoded)"
        ) from exc


async def _form(request: web.Request) -> list[tuple[str, str]]:
    if request.content_type != FORM:
        raise exchange.Refusal(exchange.INVALID_REQUEST, f"the body must be {FORM}")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise exchange.Refusal(exchange.INVALID_REQUEST, f"the body is larger than {MAX_BODY_BYTES} bytes", 413)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise exchange.Refusal(
            exchange.INVALID_REQUEST, f"the body is larger than {MAX_BODY_BYTES} bytes", 413
        ) from exc
    return parse_form(body)


async def token(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    if request.method != "POST":
        refusal = exchange.Refusal(exchange.INVALID_REQUEST, "the token endpoint takes POST", 405)
        return _refusal(refusal, Allow="POST")
    grant = "unknown"
    try:
        parsed = exchange.parse(await _form(request))
        if isinstance(parsed, exchange.Exchange):
            grant = "token-exchange"
            issued = await grants.token_exchange(ctx, parsed, request.remote)
        else:
            grant = "jwt-bearer"
            issued = await grants.jwt_bearer(ctx, parsed, request.remote)
    except exchange.Refusal as refusal:
        log.info("Refused a %s request from %s: %s (%s)", grant, request.remote, refusal.error, refusal.description)
        return _refusal(refusal)
    except (errors.KubeError, providerkeys.FetchError) as exc:
        log.warning("Could not answer a %s request from %s: %s", grant, request.remote, exc)
        return _refusal(exchange.Refusal(exchange.TEMPORARILY_UNAVAILABLE, str(exc)[:300], 503), **{"Retry-After": "5"})
    except Exception as exc:  # never a 500; the cause is logged by type only (no token can leak)
        log.error("Failed a %s request from %s unexpectedly: %s", grant, request.remote, type(exc).__name__)
        return _refusal(exchange.Refusal(exchange.SERVER_ERROR, "the request could not be processed", 503))
    log.info("Issued a token to %s (%s, key %s) for %s", issued.subject, issued.grant, issued.kid, request.remote)
    return _json(issued.body)


def _refused(refused: channel.Refused) -> web.Response:
    return web.Response(
        status=refused.status, body=refused.body(), content_type="application/json", headers=refused.headers()
    )


async def bundle(request: web.Request) -> web.StreamResponse:
    """One long poll of a namespace's trust bundle (the live channel)."""
    hub, reviews = request.app[HUB], request.app[REVIEWS]
    try:
        poll = channel.poll(request.match_info["namespace"], request.query)
        token = channel.bearer(request.headers.getall(hdrs.AUTHORIZATION, []))
        if not hub.informer.synced.is_set():
            raise channel.Refused(503, "starting", "the issuer is still listing the trust bundles", 2)
        channel.may_read(await reviews.namespace(token), poll)
        if hub.current(poll.namespace) is None:
            raise channel.Refused(404, "no_bundle", f"namespace {poll.namespace} has no trust bundle (not opted in?)")
        found = await hub.newer(poll.namespace, poll.after, poll.wait)
    except channel.Refused as refused:
        if refused.status >= 500 or refused.status == 401:
            log.info("Refused a bundle poll from %s: %s", request.remote, refused.reason)
        return _refused(refused)
    if found is None:
        current = hub.current(poll.namespace)
        etag = f'"{current.sequence}"' if current is not None else '"0"'
        return web.Response(status=304, headers={"ETag": etag, "Cache-Control": "no-store"})
    headers = {"ETag": f'"{found.sequence}"', "Cache-Control": "no-store"}
    return web.Response(body=found.text, content_type="application/json", headers=headers)


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"alive": True})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    hub = request.app[HUB]
    detail = {each.what: each.synced.is_set() for each in (*ctx.caches.all, hub.informer)}
    ready = ctx.caches.synced() and hub.informer.synced.is_set()
    reviews = request.app[REVIEWS]
    polls = {"waiting": hub.waiting, "reviews": reviews.reviews, "shed": reviews.shed}
    return web.json_response({"ready": ready, "caches": detail, "channel": polls}, status=200 if ready else 503)


async def not_found(_: web.Request) -> web.Response:
    return web.json_response({"error": "not_found"}, status=404)


def app(ctx: grants.Context, hub: bundles.Hub, reviews: bundles.Reviews) -> web.Application:
    application = web.Application(client_max_size=MAX_BODY_BYTES)
    application[CONTEXT] = ctx
    application[HUB] = hub
    application[REVIEWS] = reviews
    application.router.add_get(protocol.BUNDLES_PATH + "{namespace}", bundle)
    application.router.add_get("/.well-known/openid-configuration", discovery)
    application.router.add_get("/jwks", jwks)
    application.router.add_route("*", protocol.TOKEN_PATH, token)
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    return application


def tls_context(config: Config) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    return context


async def _sweep_forever(ctx: grants.Context) -> None:
    """Delete expired assertion ids now and then (any replica may; deletes are idempotent)."""
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        try:
            await issuing.sweep_jtis(ctx.kube, ctx.cfg.namespace, ctx.clock())
        except errors.KubeError as exc:
            log.warning("Could not sweep expired assertion ids: %s", exc)


async def serve(config: Config, cfg: settings.Settings) -> None:
    kube = client.connect()
    held = caches.Caches(kube, cfg)
    held.start()
    hub = bundles.Hub(kube)
    hub.start(asyncio.get_running_loop())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with aiohttp.ClientSession() as session:
        now = clock.utcnow
        ctx = grants.Context(kube, cfg, held, providerkeys.Cache(session, now, cfg.provider_refetch), now)
        reviews = bundles.Reviews(kube, cfg.kubernetes_audience)
        runner = web.AppRunner(app(ctx, hub, reviews), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, config.listen[0], config.listen[1], ssl_context=tls_context(config))
        await site.start()
        sweeper = asyncio.create_task(_sweep_forever(ctx))
        log.info("Serving the issuer %s on %s:%d", cfg.issuer, *config.listen)
        try:
            await stop.wait()
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            hub.close()  # waiting polls answer 304 and their sidecars poll another replica
            await runner.cleanup()
            held.stop()
            log.info("Stopped")


def run(config: Config) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = settings.Settings.from_env()
    except errors.ConfigError as exc:
        log.error("%s", exc)
        return 2
    asyncio.run(serve(config, cfg))
    return 0
