"""The trust bundle format: one versioned model for its writer (:mod:`tessera.core.bundles`), its
readers (:mod:`tessera.sidecar.trust`, ``tessera token decode``, ``tessera can-i``) and verifiers
written by others, who read the JSON schema :data:`SCHEMA` (published as
``docs/trust-bundle.schema.json``).

``bundle.json`` in the ConfigMap ``tessera-trust-bundle`` of every opted-in namespace::

    {"version": 1,
     "sequence": 1795406115123,                     # only ever grows (see below)
     "issuer": "https://...",                       # iss of operator-minted tokens
     "issuerKeys": {"keys": [JWK, ...]},            # incl. the next key, published before it signs
     "serviceAccountKeys": {"keys": [JWK + "sub" (+ "exp"), ...]},  # self-signed tokens: iss = sub
     "revocations": [{"sub": URN, "notBefore": unix seconds}, ...],
     "accounts": {URN: {"cidrs": [...]}},           # source ranges, for self-signed tokens too
     "grants": {principal: {"permissions": [...], "services": [...]}}}  # this namespace's RoleBindings

Versioning: ``version`` changes only when a reader of the previous version would misread a bundle.
Members added later are optional and readers ignore members they do not know, so a version 1
reader keeps working with any version 1 bundle. ``sequence`` is such an addition: a namespace's
bundles carry strictly increasing sequence numbers (as SPIFFE bundles do), so a reader that gets
bundles by two paths (the mounted file and the live channel) never goes back to an older one. A
bundle without one was written before sequences existed; readers take it as before, by arrival.

Standard library only: the sidecar imports this module and must stay small.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, TypeGuard

from tessera import errors

FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
BUNDLE_KEY = "bundle.json"  # the ConfigMap key, and the mounted file's name
ISSUER_CA_KEY = "issuer-ca.crt"  # the issuer service's CA (PEM), beside the bundle when the operator knows it
MAX_SEQUENCE = 2**53 - 1  # exact in every JSON implementation (IEEE 754 doubles)

Jwk = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Revocation:
    subject: str
    not_before: int  # tokens of the subject issued (iat) before this moment are refused


@dataclasses.dataclass(frozen=True)
class Grant:
    permissions: tuple[str, ...]
    services: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Bundle:
    issuer: str
    issuer_keys: tuple[Jwk, ...] = ()
    account_keys: tuple[Jwk, ...] = ()  # each with its "sub" (and "exp" when the key expires)
    revocations: tuple[Revocation, ...] = ()
    accounts: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # subject -> CIDRs
    grants: Mapping[str, Grant] = dataclasses.field(default_factory=dict)  # principal -> its grant here
    sequence: int | None = None
    version: int = FORMAT_VERSION

    def not_before(self) -> dict[str, int]:
        """Subject -> the moment its tokens must be issued after (the latest, if listed twice)."""
        found: dict[str, int] = {}
        for entry in self.revocations:
            found[entry.subject] = max(entry.not_before, found.get(entry.subject, entry.not_before))
        return found

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "version": self.version,
            "issuer": self.issuer,
            "issuerKeys": {"keys": list(self.issuer_keys)},
            "serviceAccountKeys": {"keys": list(self.account_keys)},
            "revocations": [{"sub": r.subject, "notBefore": r.not_before} for r in self.revocations],
            "accounts": {subject: {"cidrs": list(cidrs)} for subject, cidrs in self.accounts.items()},
            "grants": {
                principal: {"permissions": list(g.permissions), "services": list(g.services)}
                for principal, g in self.grants.items()
            },
        }
        if self.sequence is not None:
            doc["sequence"] = self.sequence
        return doc


def render(bundle: Bundle) -> str:
    """Compact JSON with sorted members: equal bundles are equal bytes."""
    return json.dumps(bundle.to_json(), sort_keys=True, separators=(",", ":"))


def _fail(message: str) -> errors.BundleError:
    return errors.BundleError(message)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _strings(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _keys(doc: Mapping[str, Any], section: str, account: bool) -> tuple[Jwk, ...]:
    value = doc.get(section, {})
    items = value.get("keys", []) if isinstance(value, dict) else None
    if not isinstance(items, list):
        raise _fail(f"{section}.keys must be a list")
    for jwk in items:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str) or not jwk["kid"]:
            raise _fail(f"{section}: every key needs a string kid")
        if account and (not isinstance(jwk.get("sub"), str) or not jwk["sub"]):
            raise _fail(f"{section}: every key needs its sub")
        if "exp" in jwk and not _is_int(jwk["exp"]):
            raise _fail(f"{section}: key {jwk['kid']} has a non-integer exp")
    return tuple(items)


def _revocations(doc: Mapping[str, Any]) -> tuple[Revocation, ...]:
    entries = doc.get("revocations", [])
    if not isinstance(entries, list):
        raise _fail("revocations must be a list")
    found = []
    for entry in entries:
        sub, not_before = (entry.get("sub"), entry.get("notBefore")) if isinstance(entry, dict) else (None, None)
        if not isinstance(sub, str) or not _is_int(not_before):
            raise _fail("revocations: every entry needs a string sub and an integer notBefore")
        found.append(Revocation(sub, not_before))
    return tuple(found)


def _accounts(doc: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    accounts = doc.get("accounts", {})
    if not isinstance(accounts, dict):
        raise _fail("accounts must be an object")
    found = {}
    for subject, entry in accounts.items():
        ranges = entry.get("cidrs") if isinstance(entry, dict) else None
        if not _strings(ranges):
            raise _fail(f"accounts: {subject} needs a list of cidrs")
        found[subject] = tuple(ranges)
    return found


def _grants(doc: Mapping[str, Any]) -> dict[str, Grant]:
    given = doc.get("grants", {})
    if not isinstance(given, dict):
        raise _fail("grants must be an object")
    found = {}
    for principal, grant in given.items():
        permissions = grant.get("permissions") if isinstance(grant, dict) else None
        services = grant.get("services", []) if isinstance(grant, dict) else None
        if not _strings(permissions):
            raise _fail(f"grants: {principal} needs a list of permissions")
        if not _strings(services):
            raise _fail(f"grants: {principal} has services that are not a list of strings")
        found[principal] = Grant(tuple(permissions), tuple(services))
    return found


def parse(text: str | bytes) -> Bundle:
    """The bundle in ``text``, or :class:`tessera.errors.BundleError` naming the first thing wrong with
    its structure (never key material). Key material itself is checked by whoever loads the keys."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(f"the trust bundle is not JSON: {type(exc).__name__} at {getattr(exc, 'pos', '?')}") from exc
    if not isinstance(doc, dict):
        raise _fail("the trust bundle is not a JSON object")
    version = doc.get("version")
    if version not in SUPPORTED_VERSIONS or not _is_int(version):
        raise _fail(f"unsupported trust bundle version {version!r}; this reader reads {SUPPORTED_VERSIONS}")
    sequence = doc.get("sequence")
    if sequence is not None and (not _is_int(sequence) or not 0 < sequence <= MAX_SEQUENCE):
        raise _fail(f"the sequence must be a positive integer up to {MAX_SEQUENCE}")
    issuer = doc.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise _fail("the trust bundle names no issuer")
    return Bundle(
        issuer=issuer,
        issuer_keys=_keys(doc, "issuerKeys", account=False),
        account_keys=_keys(doc, "serviceAccountKeys", account=True),
        revocations=_revocations(doc),
        accounts=_accounts(doc),
        grants=_grants(doc),
        sequence=sequence,
        version=version,
    )


def newer(candidate: int | None, current: int | None) -> bool:
    """Whether a bundle with sequence ``candidate`` may replace one with ``current``: only a greater
    sequence does; an unsequenced bundle (an older writer's) is ordered by arrival, as before."""
    return candidate is None or current is None or candidate > current


_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
_JWK: dict[str, Any] = {
    "type": "object",
    "description": "A public JWK (RFC 7517): EC P-256 (ES256), OKP Ed25519 (EdDSA) or RSA (RS256); the key's "
    "type decides its one algorithm, and a kid found twice in one bundle is trusted for neither.",
    "required": ["kid", "kty"],
    "properties": {
        "kid": {"type": "string", "minLength": 1, "description": "RFC 7638 thumbprint"},
        "kty": {"enum": ["EC", "OKP", "RSA"]},
        "alg": {"enum": ["ES256", "EdDSA", "RS256"]},
        "exp": {"type": "integer", "description": "not trusted from this moment (unix seconds)"},
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://tessera.dev/schemas/trust-bundle-v1.json",
    "title": "Tessera trust bundle, version 1",
    "description": "bundle.json of the ConfigMap tessera-trust-bundle (and of the issuer's /bundles/<namespace> "
    "answer): everything a verifier in one namespace needs. Readers ignore members they do not know.",
    "type": "object",
    "required": ["version", "issuer"],
    "properties": {
        "version": {"const": FORMAT_VERSION},
        "sequence": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_SEQUENCE,
            "description": "Strictly increasing per namespace: never replace a bundle by one with a lower or "
            "equal sequence. Absent in bundles written before it existed.",
        },
        "issuer": {"type": "string", "minLength": 1, "description": "iss of the tokens the operator signs"},
        "issuerKeys": {
            "type": "object",
            "properties": {"keys": {"type": "array", "items": _JWK}},
            "description": "The issuer's public keys (a JWKS), the next one before it signs",
        },
        "serviceAccountKeys": {
            "type": "object",
            "properties": {
                "keys": {
                    "type": "array",
                    "items": {
                        **_JWK,
                        "required": ["kid", "kty", "sub"],
                        "properties": {
                            **_JWK["properties"],
                            "sub": {"type": "string", "minLength": 1, "description": "the account (iss = sub)"},
                        },
                    },
                }
            },
            "description": "Keys of enabled ServiceAccounts: tokens they sign have iss = sub = the key's sub",
        },
        "revocations": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["sub", "notBefore"],
                "properties": {"sub": {"type": "string"}, "notBefore": {"type": "integer"}},
            },
            "description": "Tokens of sub issued (iat) before notBefore (unix seconds) are refused",
        },
        "accounts": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["cidrs"],
                "properties": {"cidrs": _STRINGS},
            },
            "description": "Subject -> the only source ranges its tokens may be used from",
        },
        "grants": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["permissions"],
                "properties": {"permissions": _STRINGS, "services": _STRINGS},
            },
            "description": "Principal (a service account URN, or user:<issuer>#<subject>) -> what the "
            "namespace's RoleBindings grant it",
        },
    },
}


def schema_text() -> str:
    return json.dumps(SCHEMA, indent=2) + "\n"
