"""Decisions about ServiceAccountKeys: register a key, reject it, or hold it back; what status to show.

:func:`plan` runs named checks in order, and the first that fires wins::

    disabled                      -> Inactive  Disabled
    expired                       -> Inactive  Expired
    account missing               -> Reject    ServiceAccountNotFound
    generated, its Secret gone    -> Reject    PrivateKeyLost
    generated, Secret holds other -> Reject    PrivateKeyReplaced
    key unusable                  -> Reject    InvalidKey
    otherwise                     -> Register  KeyRegistered (supplied) or KeyGenerated

For a generated key the caller reads the pair back from its Secret (or generates it) before
planning, so planning stays pure. Once a generated key is registered, its Secret is the only copy
of the private key (the operator never keeps one): when it is deleted, or holds another key, the
key is withdrawn from every trust bundle (nobody in the cluster can sign with it any more, and
whoever holds a copy should not) and the status says so; it is never generated again silently,
which would change the key under the same name. Re-creating the ServiceAccountKey generates a new one.

:func:`registered` turns a resource body into what a Kopf index
keeps for the trust bundles, and never raises.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tessera import errors
from tessera.api import meta
from tessera.api import serviceaccountkey as sak_api
from tessera.core import conditions
from tessera.crypto import keys

KEY_SECRET_TYPE = f"{meta.GROUP}/service-account-key"
KEY_FOR_LABEL = f"{meta.GROUP}/service-account-key"
COMPONENT = "service-account-key"
KEY_ID_ANNOTATION = f"{meta.GROUP}/key-id"
PRIVATE_PEM = "private-key.pem"  # PKCS#8
PRIVATE_JWK = "private-key.jwk"  # with kid, alg and use
KEY_ID = "key-id"  # the kid a workload puts in its JWT header
SUBJECT = "subject"  # the iss and sub a workload puts in its JWT

REGISTERED = "KeyRegistered"
GENERATED = "KeyGenerated"
INVALID = "InvalidKey"
ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
DISABLED = "Disabled"
EXPIRED = "Expired"
PRIVATE_KEY_LOST = "PrivateKeyLost"
PRIVATE_KEY_REPLACED = "PrivateKeyReplaced"


@dataclasses.dataclass(frozen=True)
class KeySecret:
    """What the operator knows of a generated key's Secret: the kid of the private key in it (None when
    it is unreadable). Never the key itself."""

    kid: str | None


# Status fields that describe the key; written as null when there is no key to describe.
_KEY_FIELDS = ("keyId", "algorithm", "fingerprint", "publicKey", "expiresAt", "secretName")


@dataclasses.dataclass(frozen=True)
class Register:
    """The key is trusted for the account's subject: Ready=True."""

    public_key: keys.PublicKey
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Reject:
    """The input is wrong (Ready=False); ``public_key`` is the key when it parses, to show its facts."""

    reason: str
    message: str
    public_key: keys.PublicKey | None = None


@dataclasses.dataclass(frozen=True)
class Inactive:
    """The key is fine but not trusted now, disabled or expired (Ready=False, not an error)."""

    reason: str
    message: str
    public_key: keys.PublicKey | None = None


Plan = Register | Reject | Inactive


def key_secret_name(sak: sak_api.ServiceAccountKey) -> str:
    return f"{sak.name}-tessera-key"


def public_key_from_spec(spec: sak_api.ServiceAccountKeySpec) -> keys.PublicKey:
    """The supplied public key; KeyMaterialError when it is unreadable, weak, or its JWK is inconsistent."""
    supplied = spec.public_key
    if supplied is not None and supplied.pem is not None and supplied.jwk is None:
        return keys.load_public_pem(supplied.pem)
    if supplied is not None and supplied.jwk is not None and supplied.pem is None:
        return _from_jwk(supplied.jwk.wire())
    raise errors.KeyMaterialError("publicKey must hold exactly one of pem or jwk")


def _from_jwk(jwk: keys.Jwk) -> keys.PublicKey:
    key = keys.load_jwk(jwk)
    expected = keys.algorithm_for(key)
    if "kid" in jwk and jwk["kid"] != keys.thumbprint(key):
        raise errors.KeyMaterialError(
            f"the JWK's kid is not its RFC 7638 thumbprint ({keys.thumbprint(key)}); omit kid or use the thumbprint"
        )
    if "alg" in jwk and jwk["alg"] != expected:
        raise errors.KeyMaterialError(f"the JWK's alg {jwk['alg']!r} does not fit its key type, which signs {expected}")
    if jwk.get("use", "sig") != "sig":
        raise errors.KeyMaterialError("the JWK's use must be sig")
    return key


@dataclasses.dataclass(frozen=True)
class _Observed:
    """What plan() decides from: the resource, the world, and the key (or why it is unusable)."""

    sak: sak_api.ServiceAccountKey
    account_exists: bool
    now: datetime.datetime
    key: keys.PublicKey | None
    problem: str | None
    secret: KeySecret | None = None  # a registered generated key's Secret; None when it is gone


def _key_of(sak: sak_api.ServiceAccountKey, generated_public: keys.PublicKey | None) -> keys.PublicKey | None:
    spec = sak.spec
    if (spec.public_key is None) == (spec.generate is None):
        raise errors.KeyMaterialError("set exactly one of publicKey or generate")
    if spec.generate is None:
        return public_key_from_spec(spec)
    if generated_public is not None:
        keys.check_strength(generated_public)
        if keys.algorithm_for(generated_public) != spec.generate.algorithm:
            raise errors.KeyMaterialError(
                f"Secret {key_secret_name(sak)} holds a {keys.algorithm_for(generated_public)} key but "
                f"generate.algorithm is {spec.generate.algorithm}; delete the Secret to generate a new key"
            )
    return generated_public


def _observe(
    sak: sak_api.ServiceAccountKey,
    account_exists: bool,
    generated_public: keys.PublicKey | None,
    now: datetime.datetime,
    secret: KeySecret | None,
) -> _Observed:
    try:
        return _Observed(sak, account_exists, now, _key_of(sak, generated_public), None, secret)
    except errors.KeyMaterialError as exc:
        return _Observed(sak, account_exists, now, None, str(exc), secret)


def registered_kid(sak: sak_api.ServiceAccountKey) -> str | None:
    """The kid a generated key was registered with (its status), None before it was generated."""
    return sak.status.key_id if sak.spec.generate is not None and sak.status.public_key else None


def _disabled(o: _Observed) -> Plan | None:
    if not o.sak.spec.disabled:
        return None
    return Inactive(DISABLED, "the key is disabled: no trust bundle holds it", o.key)


def _expired(o: _Observed) -> Plan | None:
    expires_at = o.sak.spec.expires_at
    if expires_at is None or expires_at > o.now:
        return None
    return Inactive(EXPIRED, f"the key expired at {expires_at.isoformat()}: no trust bundle holds it", o.key)


def _account_missing(o: _Observed) -> Plan | None:
    if o.account_exists:
        return None
    account, namespace = o.sak.spec.service_account_name, o.sak.namespace
    return Reject(ACCOUNT_NOT_FOUND, f"ServiceAccount {account} does not exist in namespace {namespace}", o.key)


_NEVER_KEPT = (
    "the operator never keeps a private key, so it cannot restore it; the key was withdrawn from every trust "
    "bundle. Delete and re-create this ServiceAccountKey to generate a new key (or restore the Secret from a backup)"
)


def _private_key_lost(o: _Observed) -> Plan | None:
    kid = registered_kid(o.sak)
    if kid is None or o.secret is not None:
        return None
    return Reject(
        PRIVATE_KEY_LOST, f"Secret {key_secret_name(o.sak)} holding the private key {kid} is gone: {_NEVER_KEPT}", o.key
    )


def _private_key_replaced(o: _Observed) -> Plan | None:
    kid = registered_kid(o.sak)
    if kid is None or o.secret is None or o.secret.kid == kid:
        return None
    held = f"another key ({o.secret.kid})" if o.secret.kid else "no readable private key"
    return Reject(
        PRIVATE_KEY_REPLACED,
        f"Secret {key_secret_name(o.sak)} holds {held}, not the private key {kid} registered here: {_NEVER_KEPT}",
        o.key,
    )


def _invalid(o: _Observed) -> Plan | None:
    return None if o.problem is None else Reject(INVALID, o.problem)


_CHECKS: tuple[Callable[[_Observed], Plan | None], ...] = (
    _disabled,
    _expired,
    _account_missing,
    _private_key_lost,
    _private_key_replaced,
    _invalid,
)


def plan(
    sak: sak_api.ServiceAccountKey,
    account_exists: bool,
    generated_public: keys.PublicKey | None,
    now: datetime.datetime,
    secret: KeySecret | None = None,
) -> Plan:
    """What to do with the key. For ``spec.generate``, pass the public half of the pair in its Secret and,
    once the key was registered (:func:`registered_kid`), what its Secret holds now (None: it is gone)."""
    observed = _observe(sak, account_exists, generated_public, now, secret)
    for check in _CHECKS:
        verdict = check(observed)
        if verdict is not None:
            return verdict
    if observed.key is None:
        raise ValueError("a generated key must be generated (or read back from its Secret) before planning")
    kid, algorithm = keys.thumbprint(observed.key), keys.algorithm_for(observed.key)
    until = f" until {sak.spec.expires_at.isoformat()}" if sak.spec.expires_at else ""
    if sak.spec.generate is not None:
        message = f"{algorithm} key {kid} was generated into Secret {key_secret_name(sak)}; trusted for {sak.subject}"
        return Register(observed.key, GENERATED, message + until)
    return Register(observed.key, REGISTERED, f"{algorithm} key {kid} is trusted for {sak.subject}{until}")


def _key_facts(key: keys.PublicKey | None) -> dict[str, Any]:
    if key is None:
        return {}
    return {
        "key_id": keys.thumbprint(key),
        "algorithm": keys.algorithm_for(key),
        "fingerprint": keys.fingerprint(key),
        "public_key": keys.public_pem(key),
    }


def status(sak: sak_api.ServiceAccountKey, decided: Plan, now: datetime.datetime) -> dict[str, Any]:
    """The whole status object (JSON form); key fields without a value are null so a merge patch clears them."""
    ok = isinstance(decided, Register)
    condition = conditions.ready(ok, decided.reason, decided.message, sak.metadata.generation)
    shown = sak_api.ServiceAccountKeyStatus(
        conditions=conditions.set_condition(sak.status.conditions, condition, now),
        observed_generation=sak.metadata.generation,
        subject=sak.subject,
        expires_at=sak.spec.expires_at,
        secret_name=key_secret_name(sak) if sak.spec.generate is not None else None,
        **_key_facts(decided.public_key),
    )
    wire = shown.wire()
    for cleared in _KEY_FIELDS:
        wire.setdefault(cleared, None)
    return wire


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def build_key_secret(sak: sak_api.ServiceAccountKey, private_key: keys.PrivateKey) -> dict[str, Any]:
    """The Secret holding a generated key pair, with what a workload needs to sign its JWTs; owned by the key."""
    kid = keys.thumbprint(keys.public_of(private_key))
    data = {
        PRIVATE_PEM: keys.private_pem(private_key),
        PRIVATE_JWK: json.dumps(keys.private_jwk(private_key, kid), sort_keys=True, separators=(",", ":")),
        KEY_ID: kid,
        SUBJECT: sak.subject,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": KEY_SECRET_TYPE,
        "metadata": {
            "name": key_secret_name(sak),
            "namespace": sak.namespace,
            "labels": {
                meta.MANAGED_BY_LABEL: meta.MANAGED_BY_VALUE,
                meta.PART_OF_LABEL: COMPONENT,
                KEY_FOR_LABEL: sak.name,
            },
            "annotations": {KEY_ID_ANNOTATION: kid},
            "ownerReferences": [meta.owner_reference(sak_api.INFO, sak)],
        },
        "data": {name: _b64(value) for name, value in data.items()},
    }


def key_secret_facts(secret: Mapping[str, Any]) -> KeySecret:
    """What a generated key's Secret holds, as :class:`KeySecret` (for the index: no key material kept)."""
    try:
        return KeySecret(keys.thumbprint(keys.public_of(private_key_from_secret(secret))))
    except errors.KeyMaterialError:
        return KeySecret(None)


def private_key_from_secret(secret: Mapping[str, Any]) -> keys.PrivateKey:
    """The private key in a Secret from :func:`build_key_secret`; KeyMaterialError (never echoing it) otherwise."""
    name = (secret.get("metadata") or {}).get("name", "")
    encoded = (secret.get("data") or {}).get(PRIVATE_PEM)
    if not isinstance(encoded, str):
        raise errors.KeyMaterialError(f"Secret {name} has no {PRIVATE_PEM}")
    try:
        pem = base64.b64decode(encoded, validate=True).decode("ascii")
    except ValueError:  # binascii.Error and UnicodeDecodeError; not chained, their text may quote bytes
        raise errors.KeyMaterialError(f"Secret {name}: {PRIVATE_PEM} is not base64 of a PEM") from None
    return keys.load_private_pem(pem)


@dataclasses.dataclass(frozen=True)
class RegisteredKey:
    """A key trusted for a subject, as trust bundles publish it (expiry is checked by the bundle)."""

    namespace: str
    name: str
    subject: str
    kid: str
    algorithm: str
    jwk: dict[str, Any]
    expires_at: datetime.datetime | None


def _ready_and_current(sak: sak_api.ServiceAccountKey) -> bool:
    ready = next((c for c in sak.status.conditions if c.type == "Ready"), None)
    generation = sak.metadata.generation
    return (
        not sak.spec.disabled
        and ready is not None
        and ready.status == "True"
        and generation is not None
        and sak.status.observed_generation == generation
    )


def _registered(sak: sak_api.ServiceAccountKey) -> RegisteredKey | None:
    pem, kid = sak.status.public_key, sak.status.key_id
    if pem is None or kid is None or not _ready_and_current(sak):
        return None
    key = keys.load_public_pem(pem)
    if keys.thumbprint(key) != kid:
        return None
    jwk = {**keys.public_jwk(key, kid), "sub": sak.subject}
    expires_at = sak.spec.expires_at
    if expires_at is not None:
        jwk["exp"] = int(expires_at.timestamp())
    return RegisteredKey(sak.namespace, sak.name, sak.subject, kid, keys.algorithm_for(key), jwk, expires_at)


def registered(body: Mapping[str, Any]) -> RegisteredKey | None:
    """The trusted key a resource body stands for, or None: disabled, not Ready, stale status, or unreadable."""
    try:
        return _registered(sak_api.ServiceAccountKey.parse(body))
    except (errors.TesseraError, ValueError, TypeError, LookupError, AttributeError):
        return None


@dataclasses.dataclass(frozen=True)
class KeyEntry:
    """What the operator keeps of a ServiceAccountKey: the resource, and the key trust bundles may hold."""

    key: sak_api.ServiceAccountKey
    trusted: RegisteredKey | None

    @classmethod
    def of(cls, sak: sak_api.ServiceAccountKey) -> KeyEntry:
        try:
            trusted = _registered(sak)
        except (errors.TesseraError, ValueError, TypeError, LookupError, AttributeError):
            trusted = None
        return cls(sak, trusted)


def active(key: RegisteredKey, now: datetime.datetime) -> bool:
    """Not expired at ``now``."""
    return key.expires_at is None or key.expires_at > now


def next_expiry(registered_keys: Iterable[RegisteredKey], now: datetime.datetime) -> datetime.datetime | None:
    """The earliest expiry after ``now``: when a bundle holding these keys next changes by itself."""
    future = (k.expires_at for k in registered_keys if k.expires_at is not None and k.expires_at > now)
    return min(future, default=None)
