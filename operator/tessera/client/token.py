"""``tessera token``: get a Tessera token from the issuer, or decode one and say what is wrong with it.

- ``exchange``: a token from a file or stdin (an identity provider's access token, or a Kubernetes
  service account token) exchanged at the issuer (RFC 8693); prints the Tessera access token.
- ``assert``: a short JWT-bearer assertion (RFC 7523) signed with a ServiceAccountKey's private key,
  exchanged at the issuer; prints the access token.
- ``decode``: prints a token's header and claims, verifies it against the issuer's JWKS (through its
  discovery document) or a trust bundle file, and prints what is wrong with it.
"""

from __future__ import annotations

import dataclasses
import json
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, TextIO

from tessera import errors, protocol, trustbundle
from tessera.core import exchange
from tessera.crypto import keys
from tessera.crypto import tokens as crypto_tokens

ASSERTION_SECONDS = 60


@dataclasses.dataclass(frozen=True)
class Remote:
    issuer: str
    ca_file: Path | None

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def get_json(self, url: str) -> Any:
        if not url.startswith("https://"):
            raise errors.ConfigError(f"{url} is not an https URL")
        with urllib.request.urlopen(url, timeout=30, context=self.context()) as answer:  # noqa: S310 (https only)
            return json.loads(answer.read())

    def post_form(self, form: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(  # noqa: S310 (the issuer is https, checked above)
            self.issuer.rstrip("/") + protocol.TOKEN_PATH,
            data=urllib.parse.urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        if not self.issuer.startswith("https://"):
            raise errors.ConfigError(f"--issuer {self.issuer} is not an https URL")
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context()) as answer:  # noqa: S310
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as failed:
            return failed.code, json.loads(failed.read() or b"{}")


def _answer(status: int, body: dict[str, Any], out: TextIO, err: TextIO) -> int:
    if status == 200 and "access_token" in body:
        print(body["access_token"], file=out)
        return 0
    print(f"refused ({status}): {body.get('error')}: {body.get('error_description')}", file=err)
    return 1


def exchange_token(remote: Remote, subject_token: str, audiences: list[str], out: TextIO, err: TextIO) -> int:
    form = [
        ("grant_type", exchange.TOKEN_EXCHANGE),
        ("subject_token", subject_token.strip()),
        ("subject_token_type", exchange.TYPE_JWT),
        *(("audience", a) for a in audiences),
    ]
    return _answer(*remote.post_form(form), out, err)


def assertion(private: keys.PrivateKey, kid: str, subject: str, audience: str, now: float) -> str:
    claims = {
        "iss": subject, "sub": subject, "aud": audience, "iat": int(now), "exp": int(now) + ASSERTION_SECONDS,
        "jti": uuid.uuid4().hex,
    }  # fmt: skip
    return crypto_tokens.sign(claims, private, kid, typ="JWT")


def assert_and_exchange(
    remote: Remote, private_key: Path, kid: str, subject: str, audiences: list[str], out: TextIO, err: TextIO
) -> int:
    private = keys.load_private_pem(private_key.read_text())
    signed = assertion(private, kid, subject, remote.issuer.rstrip("/") + protocol.TOKEN_PATH, time.time())
    form = [("grant_type", exchange.JWT_BEARER), ("assertion", signed), *(("audience", a) for a in audiences)]
    return _answer(*remote.post_form(form), out, err)


def _jwks_from_bundle(path: Path) -> tuple[str, dict[str, Any], dict[str, int]]:
    doc = trustbundle.parse(path.read_bytes())
    return doc.issuer, {"keys": list(doc.issuer_keys)}, doc.not_before()


def problems(token: str, issuer: str, jwks: dict[str, Any], audience: str | None, revoked: dict[str, int]) -> list[str]:
    """What is wrong with ``token`` (empty: nothing), checked like the sidecar checks the essentials."""
    try:
        kid = crypto_tokens.unverified_header(token).get("kid")
        claims = crypto_tokens.unverified_claims(token)
    except crypto_tokens.Rejected as exc:
        return [exc.reason]
    match = [k for k in jwks.get("keys", []) if k.get("kid") == kid]
    if len(match) != 1:
        return [f"unknown_kid: no key {kid!r} in the issuer's keys"]
    try:
        public = keys.load_jwk({k: v for k, v in match[0].items() if k not in ("sub", "exp")})
        crypto_tokens.verify(token, public, issuer=issuer, audiences=[audience] if audience else None, leeway=60)
    except errors.KeyMaterialError as exc:
        return [f"bad_key: {exc}"]
    except crypto_tokens.Rejected as exc:
        return [exc.reason]
    not_before = revoked.get(str(claims.get("sub")))
    if not_before is not None and int(claims.get("iat", 0)) < not_before:
        return ["revoked: issued before the subject's revocation"]
    return []


def decode(token: str, remote: Remote | None, bundle: Path | None, audience: str | None, out: TextIO) -> int:
    token = token.strip()
    try:
        header, claims = crypto_tokens.unverified_header(token), crypto_tokens.unverified_claims(token)
    except crypto_tokens.Rejected as exc:
        print(f"not a JWT: {exc}", file=out)
        return 1
    print(json.dumps({"header": header, "claims": claims}, indent=2, sort_keys=True), file=out)
    if bundle is not None:
        issuer, jwks, revoked = _jwks_from_bundle(bundle)
    elif remote is not None:
        discovery = remote.get_json(remote.issuer.rstrip("/") + "/.well-known/openid-configuration")
        issuer, jwks, revoked = discovery["issuer"], remote.get_json(discovery["jwks_uri"]), {}
    else:
        print("not verified: give --issuer or --bundle", file=out)
        return 1
    found = problems(token, issuer, jwks, audience, revoked)
    expires = claims.get("exp")
    left = f", expires in {int(expires - time.time())} s" if isinstance(expires, int | float) else ""
    print("valid" + left if not found else "invalid: " + "; ".join(found), file=out)
    return 0 if not found else 1


def read_token(source: str | None) -> str:
    if source in (None, "-"):
        return sys.stdin.read()
    return Path(source).read_text()
