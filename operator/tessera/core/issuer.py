"""The issuer's signing keys: created once, rotated on a schedule, serialised into one Secret.

The key set is a tuple of :class:`IssuerKey`, each with the moment it may start signing. A key is
published (in the JWKS and every trust bundle) from its creation, but signs only from
``signs_from``, a publishing lead later, so verifiers have it before they meet a token it signed.
A key leaves once a successor has signed for longer than any token may live: by then every token
it signed has expired.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any

from tessera import errors
from tessera.core import settings
from tessera.crypto import keys

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class IssuerKey:
    kid: str
    private_key: keys.PrivateKey = dataclasses.field(repr=False)
    created_at: datetime.datetime
    signs_from: datetime.datetime

    @property
    def algorithm(self) -> keys.Algorithm:
        return keys.algorithm_for(self.public_key)

    @property
    def public_key(self) -> keys.PublicKey:
        return keys.public_of(self.private_key)

    @classmethod
    def generate(cls, algorithm: keys.Algorithm, now: datetime.datetime, signs_from: datetime.datetime) -> IssuerKey:
        private = keys.generate(algorithm)
        return cls(keys.thumbprint(keys.public_of(private)), private, now, signs_from)


KeySet = tuple[IssuerKey, ...]


def initial(algorithm: keys.Algorithm, now: datetime.datetime) -> KeySet:
    """The first key signs at once: no verifier can hold an older bundle that lacks it."""
    return (IssuerKey.generate(algorithm, now, now),)


def signing_key(keyset: KeySet, now: datetime.datetime) -> IssuerKey:
    """The newest key allowed to sign at ``now``."""
    usable = [k for k in keyset if k.signs_from <= now]
    if not usable:
        raise errors.ConfigError("no issuer key may sign yet")
    return max(usable, key=lambda k: (k.signs_from, k.kid))


@dataclasses.dataclass(frozen=True)
class Rotation:
    """What the schedule asks for at one moment: keys to withdraw, and whether a new key is due."""

    retire: frozenset[str]
    add: bool

    @property
    def changes(self) -> bool:
        return bool(self.retire) or self.add


def _retires_at(key: IssuerKey, keyset: KeySet, cfg: settings.Settings) -> datetime.datetime | None:
    """When ``key`` may leave: its successor's takeover plus the longest token lifetime and leeway."""
    later = [k.signs_from for k in keyset if k.signs_from > key.signs_from]
    return min(later) + cfg.max_token_ttl + cfg.clock_leeway if later else None


def rotation(keyset: KeySet, cfg: settings.Settings, now: datetime.datetime) -> Rotation:
    """Retire keys whose tokens have all expired; add a key when the newest is older than the period."""
    retire = frozenset(k.kid for k in keyset if (at := _retires_at(k, keyset, cfg)) is not None and at <= now)
    pending = any(k.signs_from > now for k in keyset)
    newest = max(keyset, key=lambda k: k.created_at)
    due = cfg.key_rotation > datetime.timedelta(0) and now >= newest.created_at + cfg.key_rotation
    return Rotation(retire=retire, add=due and not pending)


def rotated(keyset: KeySet, plan: Rotation, cfg: settings.Settings, now: datetime.datetime) -> KeySet:
    """Apply ``plan``: the new key is published now and signs after the publishing lead."""
    kept = tuple(k for k in keyset if k.kid not in plan.retire)
    if plan.add:
        kept = (*kept, IssuerKey.generate(cfg.algorithm, now, now + cfg.key_publish_lead))
    return kept


def next_rotation_event(keyset: KeySet, cfg: settings.Settings) -> datetime.datetime | None:
    """The next moment :func:`rotation` may ask for something (None: never, rotation is off)."""
    moments = [at for k in keyset if (at := _retires_at(k, keyset, cfg)) is not None]
    if cfg.key_rotation > datetime.timedelta(0):
        moments.append(max(k.created_at for k in keyset) + cfg.key_rotation)
    return min(moments) if moments else None


def jwks(keyset: KeySet) -> dict[str, Any]:
    """Public keys only, sorted by kid so unchanged keys serialise identically."""
    return {"keys": [keys.public_jwk(k.public_key, k.kid) for k in sorted(keyset, key=lambda k: k.kid)]}


def dumps(keyset: KeySet) -> str:
    entries = [
        {
            "kid": k.kid,
            "privateKeyPem": keys.private_pem(k.private_key),
            "createdAt": k.created_at.isoformat(),
            "signsFrom": k.signs_from.isoformat(),
        }
        for k in sorted(keyset, key=lambda k: k.kid)
    ]
    return json.dumps({"version": FORMAT_VERSION, "keys": entries}, sort_keys=True)


def loads(text: str) -> KeySet:
    """Parse the Secret's content; errors name the problem, never the key material."""
    try:
        data = json.loads(text)
        entries = data["keys"]
        keyset = tuple(
            IssuerKey(
                kid=e["kid"],
                private_key=keys.load_private_pem(e["privateKeyPem"]),
                created_at=datetime.datetime.fromisoformat(e["createdAt"]),
                signs_from=datetime.datetime.fromisoformat(e["signsFrom"]),
            )
            for e in entries
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.KeyMaterialError(f"the issuer key set is malformed ({type(exc).__name__})") from exc
    if not keyset:
        raise errors.KeyMaterialError("the issuer key set is empty")
    return keyset


def missing_message(namespace: str, lost_kids: tuple[str, ...]) -> str:
    """What to say while the key Secret is lost (:func:`lost_keys`): why nothing is signed, and the two ways out."""
    return (
        f"the issuer key Secret {namespace}/{settings.ISSUER_KEYS_SECRET} is gone, and the keys it held "
        f"({', '.join(lost_kids) or 'unknown'}) are still published in {namespace}/{settings.ISSUER_JWKS_CONFIGMAP}. "
        "Tessera does not mint a new issuer identity on its own: every token in use would stop verifying. "
        "Restore the Secret from a backup, or, to start over with new keys, delete the ConfigMap "
        f"{settings.ISSUER_JWKS_CONFIGMAP}"
    )


def lost_keys(stored_jwks: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The kids a JWKS ConfigMap's document lists: when the key Secret is missing and these are not empty, the
    Secret was lost (an identity exists that nobody can sign for); when there are none, this is a first start."""
    if not stored_jwks:
        return ()
    return tuple(sorted(str(k.get("kid")) for k in stored_jwks.get("keys") or [] if isinstance(k, dict)))
