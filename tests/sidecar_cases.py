"""Malicious and broken tokens and requests, each with the exact status and reason the sidecar must give.

Run in-process against :func:`tessera.sidecar.decide.decide` (tests/unit/test_sidecar_security.py) and
over real HTTP against a ``tessera sidecar`` process (tests/integration/test_sidecar.py).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization

from tests.sidecar_kit import AUDIENCE, BILLING, ISSUER, LAPTOP, REPORTS, Kit, b64, compact, hs256


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    token: Callable[[Kit], str | None]
    status: int
    reason: str
    method: str = "GET"
    target: str = "/orders/1"
    source: str = "10.1.2.3"
    setup: Callable[[Kit], None] | None = None  # changes the kit (and so the bundle) first
    headers: Callable[[Kit], list[str]] | None = None  # Authorization header values, instead of Bearer <token>

    def authorization(self, kit: Kit) -> list[str]:
        if self.headers is not None:
            return self.headers(kit)
        token = self.token(kit)
        return [] if token is None else [f"Bearer {token}"]


def _issuer_header(kit: Kit, **changes: object) -> dict[str, object]:
    header: dict[str, object] = {"alg": "ES256", "kid": kit.issuer_kid, "typ": "at+jwt"}
    header.update(changes)
    return {k: v for k, v in header.items() if v is not None}


def _tamper_signature(token: str) -> str:
    head, body, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[5] ^= 0x01
    return f"{head}.{body}.{b64(bytes(raw))}"


def _swap_payload(kit: Kit) -> str:
    head, _, sig = kit.issued(REPORTS).split(".")
    return f"{head}.{b64(json.dumps(kit.claims(BILLING)).encode())}.{sig}"  # reports' signature, billing's claims


def _public_pem(kit: Kit) -> bytes:
    return kit.issuer_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _signed_text(kit: Kit, payload: str) -> str:
    return compact(_issuer_header(kit), payload, kit.issuer_key)


def _revoke(sub: str) -> Callable[[Kit], None]:
    def setup(kit: Kit) -> None:
        kit.revoked[sub] = kit.now

    return setup


def _disable_laptop(kit: Kit) -> None:
    """What the operator does to a disabled account: its keys leave the bundle, its subject is revoked."""
    kit.revoked[LAPTOP] = kit.now
    kit.publish_account_key = False


def _restrict(cidrs: list[str]) -> Callable[[Kit], None]:
    def setup(kit: Kit) -> None:
        kit.cidrs[BILLING] = cidrs

    return setup


def _expire_key(kit: Kit) -> None:
    kit.account_key_exp = kit.now - 1


CASES: tuple[Case, ...] = (
    # what must pass
    Case("valid operator token", lambda k: k.issued(), 200, "permitted"),
    Case("valid self-signed token, wildcard grant", lambda k: k.self_signed(), 200, "permitted"),
    Case("public route needs no token", lambda k: None, 200, "public", target="/healthz"),
    Case("any authenticated caller", lambda k: k.issued(REPORTS), 200, "authenticated", target="/me"),
    Case("query string is not part of the path", lambda k: k.issued(), 200, "permitted", target="/orders/1?x=/admin"),
    # no usable credentials
    Case("no token", lambda k: None, 401, "missing_token"),
    Case("basic auth", lambda k: None, 401, "not_a_bearer_token", headers=lambda k: ["Basic YWxpY2U6c2VjcmV0"]),
    Case(
        "two Authorization headers",
        lambda k: None,
        401,
        "multiple_authorization_headers",
        headers=lambda k: [f"Bearer {k.issued()}", f"Bearer {k.issued(REPORTS)}"],
    ),
    # the header and the key
    Case("alg none", lambda k: compact(_issuer_header(k, alg="none"), k.claims(), None), 401, "alg_not_allowed"),
    Case(
        "HS256 signed with the issuer's public key",
        lambda k: hs256(_issuer_header(k, alg="HS256"), k.claims(), _public_pem(k)),
        401,
        "alg_not_allowed",
    ),
    Case(
        "EdDSA claimed for an ES256 key",
        lambda k: compact(_issuer_header(k, alg="EdDSA"), k.claims(), k.account_key),
        401,
        "alg_key_mismatch",
    ),
    Case("unknown kid", lambda k: compact(_issuer_header(k, kid="nope"), k.claims(), k.issuer_key), 401, "unknown_kid"),
    Case(
        "kid of an issuer nobody trusts",
        lambda k: compact(_issuer_header(k, kid=k.other_kid), k.claims(), k.other_issuer_key),
        401,
        "unknown_kid",
    ),
    Case(
        "trusted kid, signed by another key",
        lambda k: compact(_issuer_header(k), k.claims(), k.other_issuer_key),
        401,
        "bad_signature",
    ),
    Case("missing kid", lambda k: compact(_issuer_header(k, kid=None), k.claims(), k.issuer_key), 401, "missing_kid"),
    Case(
        "critical header extension",
        lambda k: compact(_issuer_header(k, crit=["exp"]), k.claims(), k.issuer_key),
        401,
        "unsupported_crit",
    ),
    Case("stripped signature", lambda k: k.issued().rsplit(".", 1)[0] + ".", 401, "bad_signature"),
    Case("altered signature", lambda k: _tamper_signature(k.issued()), 401, "bad_signature"),
    Case("altered payload", _swap_payload, 401, "bad_signature"),
    # shape
    Case("bad base64", lambda k: "eyJ!!!.e30.sig", 401, "malformed_token"),
    Case("two segments", lambda k: ".".join(k.issued().split(".")[:2]), 401, "malformed_token"),
    Case("non-ASCII", lambda k: k.issued() + "é", 401, "malformed_token"),
    Case("header is not JSON", lambda k: f"{b64(b'not json')}.e30.{b64(b'x' * 64)}", 401, "malformed_header"),
    Case("header is a JSON array", lambda k: f"{b64(b'[1,2]')}.e30.{b64(b'x' * 64)}", 401, "malformed_header"),
    Case("payload is not JSON (signed)", lambda k: _signed_text(k, "{not json"), 401, "malformed_payload"),
    Case(
        "duplicate sub claim (signed)",
        lambda k: _signed_text(k, json.dumps(k.claims())[:-1] + f', "sub": "{REPORTS}"}}'),
        401,
        "duplicate_member",
    ),
    Case(
        "duplicate sub spelled with an escape (signed)",
        lambda k: _signed_text(k, json.dumps(k.claims())[:-1] + ', "s\\u0075b": "' + REPORTS + '"}'),
        401,
        "duplicate_member",
    ),
    Case("exp is a string (signed)", lambda k: k.issued(exp=str(k.now + 100)), 401, "invalid_claims"),
    Case("exp is a boolean (signed)", lambda k: k.issued(exp=True), 401, "invalid_claims"),
    Case("aud is a number (signed)", lambda k: k.issued(aud=7), 401, "invalid_claims"),
    Case("oversize token", lambda k: k.issued(padding="x" * 9000), 401, "token_too_large"),
    # the claims
    Case("expired beyond the leeway", lambda k: k.issued(iat=k.now - 1000, exp=k.now - 61), 401, "expired"),
    Case("not yet valid", lambda k: k.issued(iat=k.now, nbf=k.now + 600, exp=k.now + 900), 401, "not_yet_valid"),
    Case("issued in the future", lambda k: k.issued(iat=k.now + 600, exp=k.now + 900), 401, "issued_in_future"),
    Case("missing exp", lambda k: k.issued(exp=None), 401, "missing_exp"),
    Case("missing iat", lambda k: k.issued(iat=None), 401, "missing_iat"),
    Case("missing iss", lambda k: k.issued(iss=None), 401, "missing_iss"),
    Case("missing sub", lambda k: k.issued(sub=None), 401, "missing_sub"),
    Case("missing aud", lambda k: k.issued(aud=None), 401, "missing_aud"),
    Case("absurd lifetime", lambda k: k.issued(exp=k.now + 10 * 365 * 86400), 401, "lifetime_too_long"),
    Case("wrong issuer", lambda k: k.issued(iss="https://evil.example.com"), 401, "wrong_issuer"),
    Case("wrong audience", lambda k: k.issued(aud="payments"), 401, "wrong_audience"),
    Case(
        "wrong typ on an operator key",
        lambda k: compact(_issuer_header(k, typ="JWT"), k.claims(), k.issuer_key),
        401,
        "wrong_typ",
    ),
    Case("revoked subject", lambda k: k.issued(), 401, "revoked", setup=_revoke(BILLING)),
    Case("disabled account's own key", lambda k: k.self_signed(), 401, "unknown_kid", setup=_disable_laptop),
    Case("self-signed for another account", lambda k: k.self_signed(sub=BILLING, iss=BILLING), 401, "wrong_issuer"),
    Case("self-signed with a foreign iss", lambda k: k.self_signed(iss=ISSUER), 401, "wrong_issuer"),
    Case("account key past its expiry", lambda k: k.self_signed(), 401, "key_expired", setup=_expire_key),
    # where it comes from, and what it asks for
    Case(
        "source outside the account's CIDRs",
        lambda k: k.issued(),
        403,
        "source_not_allowed",
        source="192.168.1.5",
        setup=_restrict(["10.0.0.0/8"]),
    ),
    Case(
        "source outside the token's cidrs claim",
        lambda k: k.issued(cidrs=["10.9.0.0/16"]),
        403,
        "source_not_allowed",
    ),
    Case("permission not granted", lambda k: k.issued(REPORTS), 403, "permission_denied"),
    Case("no rule for the method", lambda k: k.issued(), 403, "no_rule", method="DELETE"),
    Case("no rule for the path", lambda k: k.issued(), 403, "no_rule", target="/internal/x"),
    Case("double slash", lambda k: k.issued(), 403, "path_not_canonical", target="//orders/1"),
    Case("encoded dot-dot", lambda k: k.issued(), 403, "path_not_canonical", target="/orders/%2e%2e/admin/x"),
    Case("encoded slash", lambda k: k.issued(), 403, "path_not_canonical", target="/orders/..%2fadmin"),
    Case("plain dot segment", lambda k: k.issued(), 403, "path_not_canonical", target="/orders/./1"),
    Case("invalid escape", lambda k: k.issued(), 403, "path_not_canonical", target="/orders/%zz"),
    Case("case differs from the admin rule", lambda k: k.issued(), 403, "ambiguous_case", target="/ADMIN/users"),
    Case("case differs from the orders rule", lambda k: k.issued(), 403, "ambiguous_case", target="/Orders/1"),
    Case("encoded letters are decoded first", lambda k: k.issued(), 403, "permission_denied", target="/%61dmin/users"),
)

assert len({c.name for c in CASES}) == len(CASES)
AUDIENCES = frozenset({AUDIENCE})
