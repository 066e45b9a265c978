"""Identity providers: their keys, when to fetch them again, and who their users are.

Keys come from the provider's discovery document (``jwks_uri``), an explicit ``jwksURI`` or inline
JWKS. Each usable key is tied to the one algorithm its type signs with, limited to the provider's
allowed algorithms; keys for encryption, of other types or weaker than Tessera accepts are skipped
and counted. Fetching is planned here and done by an adapter: a key set is fetched again every
``refreshSeconds``, and a token with an unknown ``kid`` may make it fetch sooner, but never more
than once per :data:`UNKNOWN_KID_INTERVAL` (``TESSERA_PROVIDER_REFETCH_SECONDS``) per provider: a storm
of made-up kids costs the provider at most one fetch a minute from each fetcher, on top of the schedule.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

from tessera import errors
from tessera.api import identityprovider as idp_api
from tessera.core import assignments, conditions, settings
from tessera.crypto import keys

UNKNOWN_KID_INTERVAL = datetime.timedelta(seconds=settings.PROVIDER_REFETCH_SECONDS)
FAILED_RETRY = datetime.timedelta(seconds=30)  # the issuer retries a failed scheduled fetch after this
MAX_DOCUMENT_BYTES = 256 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"

READY = "KeysFetched"
INLINE = "KeysInline"
DISABLED = "Disabled"
FETCH_FAILED = "KeysUnavailable"
NO_KEYS = "NoUsableKeys"


@dataclasses.dataclass(frozen=True)
class ProviderKey:
    kid: str
    algorithm: keys.Algorithm
    public: keys.PublicKey = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class KeySet:
    keys: Mapping[str, ProviderKey]
    skipped: int
    source: str  # where they came from: a URL, or "inline"

    def message(self) -> str:
        skipped = f"; {self.skipped} skipped (not for signing, unsupported or not allowed)" if self.skipped else ""
        return f"{len(self.keys)} signing keys from {self.source}{skipped}"


def discovery_url(provider: idp_api.IdentityProviderSpec) -> str:
    return provider.issuer.rstrip("/") + DISCOVERY_PATH


def jwks_uri_from_discovery(document: Any, provider: idp_api.IdentityProviderSpec) -> str:
    """The ``jwks_uri`` of a discovery document that names this provider as its issuer (OIDC Discovery
    section 4.3: the issuer must equal the one the document was fetched for)."""
    if not isinstance(document, dict):
        raise errors.KeyMaterialError("the discovery document is not a JSON object")
    if document.get("issuer") != provider.issuer:
        raise errors.KeyMaterialError(
            f"the discovery document names issuer {str(document.get('issuer'))[:200]!r}, not {provider.issuer!r}"
        )
    uri = document.get("jwks_uri")
    if not isinstance(uri, str) or not uri.startswith("https://"):
        raise errors.KeyMaterialError("the discovery document has no https jwks_uri")
    return uri


def parse_jwks(document: Any, allowed: frozenset[str], source: str) -> KeySet:
    """The usable signing keys of a JWKS document; a key whose kid repeats is dropped (ambiguous)."""
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise errors.KeyMaterialError("the JWKS document has no keys list")
    found: dict[str, list[ProviderKey]] = {}
    skipped = 0
    for entry in entries:
        key = _usable(entry, allowed)
        if key is None:
            skipped += 1
            continue
        found.setdefault(key.kid, []).append(key)
    unique = {kid: same[0] for kid, same in found.items() if len(same) == 1}
    return KeySet(unique, skipped + sum(len(s) for s in found.values() if len(s) > 1), source)


def _usable(entry: Any, allowed: frozenset[str]) -> ProviderKey | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str) or entry.get("use", "sig") != "sig":
        return None
    public_members = {k: v for k, v in entry.items() if k not in keys.PRIVATE_JWK_MEMBERS}
    try:
        public = keys.load_jwk(public_members)
    except errors.KeyMaterialError:
        return None
    algorithm = keys.algorithm_for(public)
    if algorithm not in allowed or entry.get("alg", algorithm) != algorithm:
        return None
    return ProviderKey(entry["kid"], algorithm, public)


def inline_keys(provider: idp_api.IdentityProviderSpec) -> KeySet | None:
    if provider.jwks is None:
        return None
    document = {"keys": [k.model_dump(exclude_none=True) for k in provider.jwks.keys]}
    return parse_jwks(document, frozenset(provider.algorithms), "inline")


def refresh_due(
    fetched_at: datetime.datetime | None, refresh: datetime.timedelta, now: datetime.datetime
) -> datetime.datetime:
    """When the key set should be fetched again (``now`` when never fetched)."""
    return now if fetched_at is None else fetched_at + refresh


def may_fetch_for_unknown_kid(
    last_attempt: datetime.datetime | None, now: datetime.datetime, interval: datetime.timedelta = UNKNOWN_KID_INTERVAL
) -> bool:
    """Whether a token with an unknown kid may trigger a fetch now (at most once per ``interval`` per provider)."""
    return last_attempt is None or now - last_attempt >= interval


def user_principal(provider: idp_api.IdentityProviderSpec, subject: str) -> str:
    """The Tessera subject of a provider's user: the RoleBinding member key, bound to the provider."""
    return assignments.Principal.user(provider.issuer, subject).key


def status(
    provider: idp_api.IdentityProvider, found: KeySet | None, failure: str | None, now: datetime.datetime
) -> dict[str, Any]:
    """The status to write: Ready with the keys, or Ready=False with the reason (earlier facts kept)."""
    spec = provider.spec
    if spec.disabled:
        ready = (False, DISABLED, "the provider is disabled: its tokens are not exchanged")
    elif failure is not None:
        ready = (False, FETCH_FAILED, failure)
    elif found is None or not found.keys:
        ready = (False, NO_KEYS, found.message() if found is not None else "no keys")
    else:
        ready = (True, INLINE if found.source == "inline" else READY, found.message())
    generation = provider.metadata.generation
    updated = conditions.set_condition(provider.status.conditions, conditions.ready(*ready, generation), now)
    body: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": [c.model_dump(by_alias=True, exclude_none=True, mode="json") for c in updated],
    }
    if found is not None:
        body.update(
            keyCount=len(found.keys),
            keyIds=sorted(found.keys),
            jwksURI=None if found.source == "inline" else found.source,
        )
        if found.source != "inline":
            body["lastFetchTime"] = now.isoformat()
    return body


def changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether the Ready condition's status, reason or message changed (a Warning is posted once per change)."""
    old_ready: Mapping[str, Any] = next((c for c in (old or {}).get("conditions", []) if c.get("type") == "Ready"), {})
    new_ready = next(c for c in new["conditions"] if c.get("type") == "Ready")
    return any(old_ready.get(k) != new_ready.get(k) for k in ("status", "reason", "message"))


def fetch_due(provider: idp_api.IdentityProvider, now: datetime.datetime) -> bool:
    """Whether the operator should fetch the provider's keys now: a new generation, the schedule says
    so, or it is not Ready (then at every check, so at most once per TESSERA_REFRESH_CHECK_SECONDS)."""
    if provider.spec.disabled:
        return False
    observed = provider.status
    ready = next((c for c in observed.conditions if c.type == "Ready"), None)
    if ready is None or ready.status != "True" or observed.observed_generation != provider.metadata.generation:
        return True
    if provider.spec.jwks is not None:
        return False
    refresh = datetime.timedelta(seconds=provider.spec.refresh_seconds)
    return now >= refresh_due(observed.last_fetch_time, refresh, now)
