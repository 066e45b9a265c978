"""Token verification: who is calling, decided from the token and the trust bundle alone.

:meth:`Verifier.authenticate` checks, first failure wins, each with a short machine-readable reason:
size, shape, strict base64url, header JSON (no duplicate members), ``alg`` on the allow-list (never
``none`` or HMAC), no ``crit``, a known ``kid``, ``alg`` equal to the one algorithm that key's type
signs with (no key confusion), the signature, then the claims: types, ``iss`` (the operator, or for
a ServiceAccountKey the account itself with ``sub = iss``), ``typ``, ``aud``, ``exp``/``nbf``/``iat``
within the leeway, the maximum lifetime, and the revocations. The payload is parsed only after the
signature checked out.

Permissions come from the bundle's grants for the namespace, for every kind of token: the bundle is
newer than any token, so a removed grant stops working at once. (The ``grants`` claim of operator
tokens serves consumers that only read the JWT.)

Verified identities are cached, keyed by a SHA-256 digest of the token (the token itself is never kept),
until they expire; a new bundle starts a new Verifier with an empty cache, which is how new
revocations and removed keys take effect at once. Not thread-safe: one event loop owns it.
"""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
import ipaddress
import json
import json.scanner
from collections.abc import Iterable
from typing import Any, Literal, NamedTuple, cast, get_args

from cryptography.exceptions import InvalidSignature

from tessera import permissions
from tessera.sidecar import defaults, trust

ISSUED_TYP = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068; case-insensitive per RFC 7515
SELF_SIGNED_TYP = frozenset({"jwt", "at+jwt", "application/at+jwt"})
# Every reason a token can be refused for (the X-Tessera-Reason of a 401).
Refusal = Literal[
    "token_too_large", "malformed_token", "malformed_header", "malformed_payload", "duplicate_member",
    "alg_not_allowed", "unsupported_crit", "missing_kid", "unknown_kid", "alg_key_mismatch", "bad_signature",
    "missing_iss", "missing_sub", "missing_exp", "missing_iat", "missing_aud", "invalid_claims",
    "wrong_issuer", "wrong_typ", "key_expired", "wrong_audience", "expired", "not_yet_valid",
    "issued_in_future", "lifetime_too_long", "revoked",
]  # fmt: skip
REFUSALS: frozenset[str] = frozenset(get_args(Refusal))
CACHE_LIMIT = 10_000
HEADER_CACHE_LIMIT = 256


@dataclasses.dataclass(frozen=True)
class Policy:
    audiences: frozenset[str]
    leeway: int = defaults.LEEWAY_SECONDS
    max_token_bytes: int = defaults.MAX_TOKEN_BYTES
    max_lifetime: int = defaults.MAX_LIFETIME_SECONDS  # exp - iat
    algorithms: frozenset[str] = frozenset({"ES256", "EdDSA", "RS256"})


class Identity(NamedTuple):  # a tuple: built once per new token, cheaper than a frozen dataclass
    subject: str
    issuer: str
    self_signed: bool
    expires_at: float
    permissions: frozenset[str]  # granted in this namespace (wildcard segments as written)
    # Source ranges: the caller must be inside at least one range of every set (the account's ranges
    # from the bundle, and the token's cidrs claim); no sets = from anywhere.
    cidrs: tuple[tuple[trust.Network, ...], ...]


@dataclasses.dataclass(frozen=True)
class Failure:
    reason: Refusal


class _Reject(Exception):  # internal control flow: never escapes this module
    def __init__(self, reason: Refusal) -> None:
        self.reason = reason


_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE = bytes(_ALPHABET.find(chr(b)) % 256 for b in range(256))  # byte -> its 6 bits; 255: not base64url
# bytes.translate is a C loop: base64url to base64, and the standard alphabet's own "+", "/" and "="
# to "*", which strict decoding refuses, so a token can only use the url-safe spelling.
_TO_STANDARD = bytes.maketrans(b"-_+/=", b"+/***")
_PADDING = (b"", b"", b"==", b"=")


def _canonical_b64url(part: bytes) -> bytes:
    """Strict, canonical base64url without padding: the unused low bits of the last character are zero,
    so each byte string has exactly one encoding (no second spelling of the same signature)."""
    rest = len(part) % 4
    if rest == 1 or (rest and _VALUE[part[-1]] % (16 if rest == 2 else 4)):
        raise _Reject("malformed_token")
    try:
        return binascii.a2b_base64(part.translate(_TO_STANDARD) + _PADDING[rest], strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise _Reject("malformed_token") from exc


def _signed_b64url(part: bytes) -> bytes:
    """The payload's base64url, without the canonical checks: its text is what the signature covers,
    so a second spelling of it fails the signature."""
    try:
        return binascii.a2b_base64(part.translate(_TO_STANDARD) + _PADDING[len(part) % 4])
    except (binascii.Error, ValueError) as exc:
        raise _Reject("malformed_token") from exc


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _Reject("duplicate_member")
    return found


_DECODER = json.JSONDecoder(object_pairs_hook=_unique)
_SCAN = json.scanner.make_scanner(_DECODER)  # type: ignore[arg-type]  # the C scanner when available


def _payload(data: bytes) -> dict[str, Any]:
    """The claims, by the strict parser: a duplicate member anywhere refuses the token (and this is
    faster than scanning for the duplicates that could matter, then parsing)."""
    return _json(data, "malformed_payload")


def _json(data: bytes, reason: Refusal) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
        try:  # fast path: a document that starts and ends at the braces, as every JWT library writes it
            value, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):  # whitespace around it, or not JSON: the full decoder decides
            value = _DECODER.decode(text)
    except _Reject:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _Reject(reason) from exc
    if not isinstance(value, dict):
        raise _Reject(reason)
    return value


_NOTHING: frozenset[str] = frozenset()


def _is_number(value: Any) -> bool:
    """An int or float, not a bool and not NaN or infinite (NumericDate, RFC 7519)."""
    kind = type(value)
    return kind is int or (kind is float and value - value == 0)


_MISSING: dict[str, Refusal] = {
    "iss": "missing_iss", "sub": "missing_sub", "exp": "missing_exp", "iat": "missing_iat", "aud": "missing_aud"
}  # fmt: skip


def _missing_or_invalid(claims: dict[str, Any], names: tuple[str, ...]) -> Refusal:
    """``missing_<claim>`` for the first of ``names`` that is absent (or null), else ``invalid_claims``."""
    for name in names:
        if claims.get(name) is None:
            return _MISSING[name]
    return "invalid_claims"


def _audiences(aud: Any) -> Iterable[str]:
    if isinstance(aud, list) and aud and all(type(a) is str for a in aud):
        return aud
    raise _Reject("missing_aud" if aud is None else "invalid_claims")


def _cidrs_claim(claims: dict[str, Any]) -> tuple[trust.Network, ...]:
    value = claims.get("cidrs")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise _Reject("invalid_claims")
    try:
        return tuple(ipaddress.ip_network(c, strict=False) for c in value)
    except ValueError as exc:
        raise _Reject("invalid_claims") from exc


class Verifier:
    """Authenticates bearer tokens against one bundle (see the module docstring)."""

    def __init__(self, bundle: trust.Bundle, policy: Policy, cache_limit: int = CACHE_LIMIT) -> None:
        self.bundle = bundle
        self.policy = policy
        self._cache: dict[bytes, Identity] = {}
        self._headers: dict[bytes, tuple[str, str, str | None]] = {}  # header text -> (alg, kid, typ)
        self._cache_limit = cache_limit
        self.hits = 0
        self.misses = 0

    @property
    def cached(self) -> int:
        """How many verified tokens are remembered now (by digest)."""
        return len(self._cache)

    def authenticate(self, token: str, now: float) -> Identity | Failure:
        raw = token.encode("ascii", "replace")  # once: for the digest, the signature, the payload
        digest = hashlib.sha256(raw).digest()  # SHA-256: the fastest digest here (CPU instructions)
        cached = self._cache.get(digest)
        if cached is not None:
            if now <= cached.expires_at + self.policy.leeway:
                self.hits += 1
                return cached
            del self._cache[digest]
        self.misses += 1
        try:
            identity = self._verify(token, raw, now)
        except _Reject as rejected:
            return Failure(rejected.reason)
        if len(self._cache) >= self._cache_limit:
            self._evict(now)
        self._cache[digest] = identity
        return identity

    def _evict(self, now: float) -> None:
        """Drop expired entries; if none were, the oldest half (insertion order)."""
        leeway = self.policy.leeway
        expired = [d for d, i in self._cache.items() if now > i.expires_at + leeway]
        for digest in expired or list(self._cache)[: self._cache_limit // 2]:
            del self._cache[digest]

    def _verify(self, token: str, raw: bytes, now: float) -> Identity:
        if len(token) > self.policy.max_token_bytes:
            raise _Reject("token_too_large")
        first, last = raw.find(b"."), raw.rfind(b".")
        if first <= 0 or first == last or raw.find(b".", first + 1) != last or not token.isascii():
            raise _Reject("malformed_token")
        alg, kid, typ = self._header(raw[:first])
        key = self.bundle.keys.get(kid)
        if key is None:
            raise _Reject("unknown_kid")
        if alg != key.algorithm:
            raise _Reject("alg_key_mismatch")
        signature = _canonical_b64url(raw[last + 1 :])
        if len(signature) != key.signature_bytes:
            raise _Reject("bad_signature")
        try:
            key.check(signature, raw[:last])
        except InvalidSignature as exc:
            raise _Reject("bad_signature") from exc
        # The payload is read only now, and only as signed: its text is what the signature covers.
        claims = _payload(_signed_b64url(raw[first + 1 : last]))
        return self._claims(typ, claims, key, now)

    def _header(self, text: bytes) -> tuple[str, str, str | None]:
        """(alg, kid, typ in lower case) of a header that passed its checks; such headers are
        remembered (tokens of one key share one header text), refused ones are not."""
        found = self._headers.get(text)
        if found is not None:
            return found
        header = _json(_canonical_b64url(text), "malformed_header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.policy.algorithms:
            raise _Reject("alg_not_allowed")
        if "crit" in header:
            raise _Reject("unsupported_crit")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise _Reject("missing_kid")
        typ = header.get("typ")
        if typ is not None and type(typ) is not str:
            raise _Reject("wrong_typ")
        found = (alg, kid, typ.lower() if typ is not None else None)
        if len(self._headers) < HEADER_CACHE_LIMIT:
            self._headers[text] = found
        return found

    def _claims(self, typ: str | None, claims: dict[str, Any], key: trust.Key, now: float) -> Identity:
        policy, bundle, get = self.policy, self.bundle, claims.get
        iss, sub = get("iss"), get("sub")
        if type(iss) is not str or type(sub) is not str or not iss or not sub:
            raise _Reject(_missing_or_invalid(claims, ("iss", "sub")))
        exp, iat, nbf = get("exp"), get("iat"), get("nbf")
        if not (
            (type(exp) is int or _is_number(exp))
            and (type(iat) is int or _is_number(iat))
            and (nbf is None or type(nbf) is int or _is_number(nbf))
        ):
            raise _Reject(_missing_or_invalid(claims, ("exp", "iat")))
        exp, iat = cast(float, exp), cast(float, iat)
        subject = key.subject
        if subject is not None:  # a ServiceAccountKey: the account signs for itself only
            if iss != subject or sub != subject:
                raise _Reject("wrong_issuer")
            if typ is not None and typ not in SELF_SIGNED_TYP:
                raise _Reject("wrong_typ")
            if key.expires_at is not None and now >= key.expires_at:
                raise _Reject("key_expired")
        else:
            if iss != bundle.issuer:
                raise _Reject("wrong_issuer")
            if typ is None or typ not in ISSUED_TYP:
                raise _Reject("wrong_typ")
        aud = get("aud")
        audiences = policy.audiences
        if type(aud) is str:
            if aud not in audiences:
                raise _Reject("wrong_audience")
        elif not any(a in audiences for a in _audiences(aud)):
            raise _Reject("wrong_audience")
        leeway = policy.leeway
        if now > exp + leeway:
            raise _Reject("expired")
        if nbf is not None and now + leeway < cast(float, nbf):
            raise _Reject("not_yet_valid")
        if iat > now + leeway:
            raise _Reject("issued_in_future")
        if exp - iat > policy.max_lifetime or exp < iat:
            raise _Reject("lifetime_too_long")
        not_before = bundle.revocations.get(sub)
        if not_before is not None and iat < not_before:
            raise _Reject("revoked")
        account_ranges = bundle.cidrs.get(sub, ())
        token_ranges = () if subject is not None or "cidrs" not in claims else _cidrs_claim(claims)
        ranges = tuple(r for r in (account_ranges, token_ranges) if r) if account_ranges or token_ranges else ()
        return Identity(sub, iss, subject is not None, float(exp), bundle.grants.get(sub, _NOTHING), ranges)


def permitted(granted: frozenset[str], needed: str) -> bool:
    """Whether any granted permission covers ``needed`` (see :func:`tessera.permissions.permitted`)."""
    return permissions.permitted(granted, needed)


def source_allowed(identity: Identity, address: str | None) -> bool:
    """Whether the caller's address is inside every set of the identity's ranges (any address when it has none)."""
    return all(permissions.address_in(ranges, address) for ranges in identity.cidrs)
