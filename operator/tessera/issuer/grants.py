"""The three grants of the token endpoint, each: find the principal, check it on a consistent read,
build the claims (tessera.core.exchange), sign with the current issuer key. Refusals are
:class:`tessera.core.exchange.Refusal`; nothing here logs or returns a token it was given.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

from tessera.api import serviceaccount as sa_api
from tessera.core import exchange, issuer, settings
from tessera.crypto import keys
from tessera.crypto import tokens as crypto_tokens
from tessera.issuer import caches
from tessera.kube import client, issuing
from tessera.remote import providerkeys


@dataclasses.dataclass(frozen=True)
class Issued:
    body: dict[str, Any]
    subject: str
    kid: str
    grant: str


@dataclasses.dataclass
class Context:
    kube: client.Clients
    cfg: settings.Settings
    caches: caches.Caches
    provider_keys: providerkeys.Cache
    clock: Callable[[], datetime.datetime]

    @property
    def leeway(self) -> int:
        return int(self.cfg.clock_leeway.total_seconds())

    def sign(self, claims: dict[str, Any], grant: str, exchanged: bool) -> Issued:
        key = issuer.signing_key(self.caches.keyset(), self.clock())
        token = crypto_tokens.sign(claims, key.private_key, key.kid)
        return Issued(exchange.response(token, claims, exchanged), claims["sub"], key.kid, grant)


def _refused(exc: crypto_tokens.Rejected, what: str) -> exchange.Refusal:
    return exchange.Refusal(exchange.INVALID_GRANT, f"{what} was refused: {exc.reason}")


async def token_exchange(ctx: Context, request: exchange.Exchange, caller: str | None) -> Issued:
    """A provider's token (its iss names an IdentityProvider), else a Kubernetes service account token."""
    try:
        iss = crypto_tokens.unverified_claims(request.subject_token).get("iss")
    except crypto_tokens.Rejected as exc:
        raise _refused(exc, "the subject token") from exc
    if isinstance(iss, str) and ctx.caches.provider_for(iss) is not None:
        return await _provider_token(ctx, request, iss)
    return await _kubernetes_token(ctx, request, caller)


async def _provider_token(ctx: Context, request: exchange.Exchange, iss: str) -> Issued:
    """Verified against the cached provider first, so a forged token costs no API call; then the
    provider is read consistently (disabled or deleted since?) before anything is signed."""
    cached = exchange.check_provider(ctx.caches.provider_for(iss), iss)
    spec = cached.spec
    try:
        kid = crypto_tokens.unverified_header(request.subject_token).get("kid")
        if not isinstance(kid, str):
            raise exchange.Refusal(exchange.INVALID_GRANT, "the subject token's header has no kid")
        key = await ctx.provider_keys.key(cached.name, spec, kid)
        if key is None:
            raise exchange.Refusal(
                exchange.INVALID_GRANT, f"IdentityProvider {cached.name} has no signing key {kid[:80]!r}"
            )
        claims = crypto_tokens.verify(
            request.subject_token, key.public, issuer=spec.issuer, audiences=spec.audiences, leeway=ctx.leeway,
            required=("exp", "iss"),
        )  # fmt: skip
    except crypto_tokens.Rejected as exc:
        raise _refused(exc, "the subject token") from exc
    current = exchange.check_provider(await issuing.read_provider(ctx.kube, cached.name), iss)
    if current.metadata.generation != cached.metadata.generation:
        raise exchange.Refusal(
            exchange.TEMPORARILY_UNAVAILABLE, f"IdentityProvider {cached.name} changed just now; try again", 503
        )
    now = ctx.clock()
    principal = exchange.user_subject(spec, claims)
    aud = exchange.audiences_for(request.audiences, spec.token_audiences, ctx.cfg.default_audience)
    ttl = exchange.lifetime(spec.token_ttl_seconds, ctx.cfg, claims.get("exp"), now)
    client_id = next((v for v in (claims.get("client_id"), claims.get("azp")) if isinstance(v, str) and v), principal)
    return ctx.sign(exchange.user_claims(principal, aud, client_id, ttl, ctx.cfg, now), "token-exchange", True)


async def _kubernetes_token(ctx: Context, request: exchange.Exchange, caller: str | None) -> Issued:
    reviewed = await issuing.review(ctx.kube, request.subject_token, ctx.cfg.kubernetes_audience)
    candidates = ctx.caches.accounts_acting_for(reviewed.namespace, reviewed.name)
    if len(candidates) != 1:
        why = "no Tessera ServiceAccount names" if not candidates else f"{len(candidates)} Tessera ServiceAccounts name"
        raise exchange.Refusal(
            exchange.INVALID_GRANT,
            f"{why} the Kubernetes ServiceAccount {reviewed.namespace}/{reviewed.name} (spec.kubernetesServiceAccount)",
        )
    found = await issuing.read_account(ctx.kube, reviewed.namespace, candidates[0].name)
    sa = exchange.check_account(found, caller)
    named = sa.spec.kubernetes_service_account
    if named is None or named.name != reviewed.name:
        raise exchange.Refusal(exchange.INVALID_GRANT, f"ServiceAccount {sa.namespace}/{sa.name} no longer names it")
    return _account_token(ctx, sa, request.audiences, "token-exchange", exchanged=True)


async def jwt_bearer(ctx: Context, request: exchange.Bearer, caller: str | None) -> Issued:
    """An assertion signed by a ServiceAccountKey of the account it names (``iss = sub``). Its signature
    is checked with the cached key first, so a forged assertion costs no API call; the key and the
    account are then read consistently before the jti is recorded and a token signed."""
    try:
        kid = crypto_tokens.unverified_header(request.assertion).get("kid")
        iss = crypto_tokens.unverified_claims(request.assertion).get("iss")
    except crypto_tokens.Rejected as exc:
        raise _refused(exc, "the assertion") from exc
    ref = sa_api.parse_subject(iss) if isinstance(iss, str) else None
    if ref is None or not isinstance(iss, str) or not isinstance(kid, str):
        raise exchange.Refusal(exchange.INVALID_GRANT, "the assertion's iss is not a Tessera ServiceAccount, or no kid")
    now = ctx.clock()
    named = ctx.caches.key_named(ref[0], kid)
    public = exchange.check_key(ctx.caches.account_keys.get(*named) if named else None, kid, iss, now)
    try:
        claims = crypto_tokens.verify(
            request.assertion, public, issuer=iss, audiences=[exchange.token_endpoint(ctx.cfg), ctx.cfg.issuer],
            leeway=ctx.leeway, required=("exp", "iss", "sub", "aud", "jti"),
        )  # fmt: skip
    except crypto_tokens.Rejected as exc:
        raise _refused(exc, "the assertion") from exc
    if claims.get("sub") != iss:
        raise exchange.Refusal(exchange.INVALID_GRANT, "the assertion's sub differs from its iss")
    jti = exchange.check_assertion(claims, now, ctx.cfg.clock_leeway)
    assert named is not None
    current = exchange.check_key(await issuing.read_key(ctx.kube, *named), kid, iss, now)
    if keys.thumbprint(current) != keys.thumbprint(public):
        raise exchange.Refusal(exchange.INVALID_GRANT, "the key changed just now")
    sa = exchange.check_account(await issuing.read_account(ctx.kube, *ref), caller)
    expires = datetime.datetime.fromtimestamp(float(claims["exp"]), datetime.UTC) + ctx.cfg.clock_leeway
    await issuing.remember_jti(ctx.kube, ctx.cfg.namespace, iss, jti, expires)
    return _account_token(ctx, sa, request.audiences, "jwt-bearer", exchanged=False)


def _account_token(
    ctx: Context, sa: sa_api.ServiceAccount, requested: tuple[str, ...], grant: str, *, exchanged: bool
) -> Issued:
    allowed = sa.spec.token.audiences
    aud = exchange.audiences_for(requested, allowed, ctx.cfg.default_audience)
    now = ctx.clock()
    key = issuer.signing_key(ctx.caches.keyset(), now)
    claims = exchange.account_claims(sa, aud, ctx.cfg, key, now, ctx.caches.not_before(sa.subject))
    return ctx.sign(claims, grant, exchanged)
