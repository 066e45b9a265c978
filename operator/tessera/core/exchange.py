"""The issuer's token endpoint, decided without I/O: parse a request, check a principal, build claims.

Three grants (RFC 6749 section 3.2, form-encoded POST, JSON answers):

- token exchange (RFC 8693) of an identity provider's token: the user ``user:<issuer>#<subject>``;
- token exchange of a Kubernetes service account token (checked by TokenReview): the Tessera
  ServiceAccount that names that Kubernetes ServiceAccount;
- JWT bearer (RFC 7523): an assertion signed with a ServiceAccountKey, ``iss = sub =`` the account.

Every refusal is a :class:`Refusal` carrying an RFC 6749 section 5.2 / RFC 8693 error code and a
description that says why, never a token or key. Checks on a principal are named predicates
evaluated in order; the first that fires is the answer.
"""

from __future__ import annotations

import dataclasses
import datetime
import secrets
from collections.abc import Sequence
from typing import Any

from tessera import errors, permissions, protocol
from tessera.api import identityprovider as idp_api
from tessera.api import serviceaccount as sa_api
from tessera.api import serviceaccountkey as sak_api
from tessera.core import issuer, providers, settings, tokens
from tessera.crypto import keys

TOKEN_EXCHANGE = protocol.TOKEN_EXCHANGE
JWT_BEARER = protocol.JWT_BEARER
TYPE_JWT = protocol.TYPE_JWT
TYPE_ACCESS_TOKEN = protocol.TYPE_ACCESS_TOKEN
TYPE_ID_TOKEN = protocol.TYPE_ID_TOKEN
SUBJECT_TOKEN_TYPES = frozenset({TYPE_JWT, TYPE_ACCESS_TOKEN, TYPE_ID_TOKEN})
REQUESTED_TOKEN_TYPES = frozenset({TYPE_ACCESS_TOKEN, TYPE_JWT})
REPEATABLE = frozenset({"audience", "resource"})  # RFC 8693 section 2.1: may appear more than once
MAX_PARAMETER_BYTES = 8192

# Error codes (RFC 6749 section 5.2, RFC 8693 section 2.2.2); the last two are for failures on our side.
INVALID_REQUEST = "invalid_request"
INVALID_GRANT = "invalid_grant"
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
INVALID_TARGET = "invalid_target"
TEMPORARILY_UNAVAILABLE = "temporarily_unavailable"
SERVER_ERROR = "server_error"

# An assertion may live at most this long (RFC 7523 section 3: "short"), so its jti is remembered briefly.
MAX_ASSERTION_SECONDS = 300


class Refusal(errors.TesseraError):
    """A refused token request: ``error`` is the RFC code, the message its ``error_description``."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


@dataclasses.dataclass(frozen=True)
class Exchange:
    subject_token: str = dataclasses.field(repr=False)
    subject_token_type: str
    audiences: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Bearer:
    assertion: str = dataclasses.field(repr=False)
    audiences: tuple[str, ...]


Request = Exchange | Bearer


def parse(pairs: Sequence[tuple[str, str]]) -> Request:
    """The grant a form asks for. Empty values count as absent (RFC 6749 section 3.2); a parameter
    other than ``audience``/``resource`` given twice is refused."""
    given: dict[str, list[str]] = {}
    for name, value in pairs:
        if len(value) > MAX_PARAMETER_BYTES:
            raise Refusal(INVALID_REQUEST, f"parameter {name[:40]} is longer than {MAX_PARAMETER_BYTES} bytes")
        if value:
            given.setdefault(name, []).append(value)
    repeated = sorted(n for n, values in given.items() if len(values) > 1 and n not in REPEATABLE)
    if repeated:
        raise Refusal(INVALID_REQUEST, f"parameter {repeated[0][:40]} is given more than once")
    one = {n: v[0] for n, v in given.items()}
    audiences = tuple(given.get("audience", []))
    grant = one.get("grant_type")
    if grant is None:
        raise Refusal(INVALID_REQUEST, "grant_type is missing")
    if grant == TOKEN_EXCHANGE:
        return _exchange(one, audiences)
    if grant == JWT_BEARER:
        return Bearer(_required(one, "assertion"), audiences)
    raise Refusal(
        UNSUPPORTED_GRANT_TYPE, f"grant_type {grant[:100]!r} is not supported; use token exchange or jwt-bearer"
    )


def _required(one: dict[str, str], name: str) -> str:
    value = one.get(name)
    if value is None:
        raise Refusal(INVALID_REQUEST, f"{name} is missing")
    return value


def _exchange(one: dict[str, str], audiences: tuple[str, ...]) -> Exchange:
    token, kind = _required(one, "subject_token"), _required(one, "subject_token_type")
    if kind not in SUBJECT_TOKEN_TYPES:
        raise Refusal(INVALID_REQUEST, f"subject_token_type {kind[:100]!r} is not supported; give a JWT")
    wanted = one.get("requested_token_type", TYPE_ACCESS_TOKEN)
    if wanted not in REQUESTED_TOKEN_TYPES:
        raise Refusal(
            INVALID_REQUEST, f"requested_token_type {wanted[:100]!r} is not supported; Tessera issues access tokens"
        )
    if "actor_token" in one:
        raise Refusal(INVALID_REQUEST, "delegation (actor_token) is not supported")
    return Exchange(token, kind, audiences)


def audiences_for(requested: Sequence[str], allowed: Sequence[str], default: str) -> list[str]:
    """The aud of the new token: what was asked for, all of it allowed; nothing asked: all allowed."""
    permitted = sorted(set(allowed)) or [default]
    if not requested:
        return permitted
    refused = sorted(set(requested) - set(permitted))
    if refused:
        raise Refusal(
            INVALID_TARGET, f"audience {refused[0][:100]!r} may not be requested; allowed: {', '.join(permitted)}"
        )
    return sorted(set(requested))


@dataclasses.dataclass(frozen=True)
class Account:
    """A Tessera ServiceAccount as read for an exchange (a consistent read: never older than a revocation)."""

    account: sa_api.ServiceAccount | None
    ref: tuple[str, str]
    deleting: bool = False


def _grant_refused(description: str) -> Refusal:
    return Refusal(INVALID_GRANT, description)


def check_account(found: Account, caller: str | None) -> sa_api.ServiceAccount:
    """The account, if it may receive a token now from a caller at ``caller``; first failure wins."""
    ns, name = found.ref
    sa = found.account
    if sa is None:
        raise _grant_refused(f"ServiceAccount {ns}/{name} does not exist")
    if found.deleting:
        raise _grant_refused(f"ServiceAccount {ns}/{name} is being deleted")
    if sa.spec.disabled:
        raise _grant_refused(f"ServiceAccount {ns}/{name} is disabled")
    ranges = sa.spec.allowed_cidrs
    if ranges and not permissions.address_in(permissions.networks(ranges), caller):
        raise _grant_refused(f"the caller's address {caller} is not in the allowedCIDRs of ServiceAccount {ns}/{name}")
    return sa


def check_key(key: sak_api.ServiceAccountKey | None, kid: str, subject: str, now: datetime.datetime) -> keys.PublicKey:
    """The registered public key ``kid`` of ``subject``, if it may sign an assertion now."""
    if key is None:
        raise _grant_refused(f"no ServiceAccountKey with kid {kid[:80]!r} is registered")
    status = key.status
    if status.subject != subject:
        raise _grant_refused("the key belongs to another account")
    if key.spec.disabled:
        raise _grant_refused(f"ServiceAccountKey {key.name} is disabled")
    expires = key.spec.expires_at or status.expires_at
    if expires is not None and expires <= now:
        raise _grant_refused(f"ServiceAccountKey {key.name} expired at {expires.isoformat()}")
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions)
    if not ready or status.public_key is None or status.key_id != kid:
        raise _grant_refused(f"ServiceAccountKey {key.name} is not registered (not Ready)")
    return keys.load_public_pem(status.public_key)


def check_assertion(claims: dict[str, Any], now: datetime.datetime, leeway: datetime.timedelta) -> str:
    """The jti of a verified assertion whose lifetime is short enough (``iss = sub`` was verified)."""
    jti, exp = claims.get("jti"), claims.get("exp")
    if not isinstance(jti, str) or not jti:
        raise _grant_refused("the assertion has no jti (needed to refuse replays)")
    if len(jti) > 256:
        raise _grant_refused("the assertion's jti is longer than 256 characters")
    if isinstance(exp, int | float) and exp > (now + leeway).timestamp() + MAX_ASSERTION_SECONDS:
        raise _grant_refused(
            f"the assertion expires more than {MAX_ASSERTION_SECONDS} s from now; make a short-lived one"
        )
    return jti


def check_provider(provider: idp_api.IdentityProvider | None, issuer_url: str) -> idp_api.IdentityProvider:
    """The provider, if its tokens may be exchanged now."""
    if provider is None:
        raise _grant_refused(f"issuer {issuer_url[:200]!r} is not a trusted identity provider")
    if provider.spec.disabled:
        raise _grant_refused(f"IdentityProvider {provider.name} is disabled")
    return provider


def user_subject(provider: idp_api.IdentityProviderSpec, claims: dict[str, Any]) -> str:
    value = claims.get(provider.subject_claim)
    if not isinstance(value, str) or not value or len(value) > 512:
        raise Refusal(INVALID_GRANT, f"the subject token's {provider.subject_claim} claim is not a usable subject")
    return providers.user_principal(provider, value)


def new_jti() -> str:
    return secrets.token_hex(16)


def lifetime(cap_seconds: int, cfg: settings.Settings, subject_exp: float | None, now: datetime.datetime) -> int:
    """A Tessera token's lifetime: ``cap_seconds``, the operator's maximum, and never past the subject token."""
    seconds = min(cap_seconds, int(cfg.max_token_ttl.total_seconds()))
    if subject_exp is not None:
        seconds = min(seconds, int(subject_exp - now.timestamp()))
    if seconds < 1:
        raise Refusal(INVALID_GRANT, "the subject token expires now; nothing is left to exchange")
    return seconds


def user_claims(
    principal: str,
    aud: Sequence[str],
    client_id: str,
    ttl: int,
    cfg: settings.Settings,
    now: datetime.datetime,
) -> dict[str, Any]:
    """RFC 9068 claims for a provider's user: the same shape as an account's, without grants (the
    trust bundle has them) and without cidrs (users have none)."""
    iat = int(now.timestamp())
    return {
        "iss": cfg.issuer,
        "sub": principal,
        "aud": aud[0] if len(aud) == 1 else list(aud),
        "iat": iat,
        "nbf": iat,
        "exp": iat + ttl,
        "jti": new_jti(),
        "client_id": client_id,
    }


def account_claims(
    sa: sa_api.ServiceAccount,
    aud: Sequence[str],
    cfg: settings.Settings,
    key: issuer.IssuerKey,
    now: datetime.datetime,
    not_before: datetime.datetime | None,
) -> dict[str, Any]:
    """An account's claims exactly as the operator mints them (grants left to the bundle), never issued
    before the account's revocation moment, so a re-enabled account's token is not refused."""
    at = max(now, not_before) if not_before is not None else now
    return tokens.claims(sa, cfg, key, at, tokens.GRANTS_IN_BUNDLE, aud=aud, jti=new_jti())


def response(token: str, claims: dict[str, Any], exchanged: bool) -> dict[str, Any]:
    """The successful answer (RFC 6749 section 5.1, RFC 8693 section 2.2.1)."""
    body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": claims["exp"] - claims["iat"]}
    if exchanged:
        body["issued_token_type"] = TYPE_ACCESS_TOKEN
    return body


def discovery(cfg: settings.Settings, keyset: issuer.KeySet) -> dict[str, Any]:
    """The OpenID Provider metadata relying parties read (kube-apiserver, PyJWT, cloud federation)."""
    base = cfg.issuer.rstrip("/")
    algorithms = sorted({k.algorithm for k in keyset}) or [cfg.algorithm]
    return {
        "issuer": cfg.issuer,
        "jwks_uri": f"{base}/jwks",
        "token_endpoint": base + protocol.TOKEN_PATH,
        "grant_types_supported": [TOKEN_EXCHANGE, JWT_BEARER],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algorithms,
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "cidrs", "grants"],
    }


def token_endpoint(cfg: settings.Settings) -> str:
    return cfg.issuer.rstrip("/") + protocol.TOKEN_PATH
