"""The trust bundle: everything a verifier in a namespace needs, in one deterministic JSON file.

The format is :mod:`tessera.trustbundle` (one model for the writer here and every reader). This
module decides the content from the operator's state: keys, revocations, account ranges and, per
namespace, the grants; and, when a namespace's content changed, the next ``sequence``.

Keys are sorted and the JSON is compact with sorted keys, so equal inputs give equal bytes and an
unchanged bundle is never rewritten. Time enters only through expiry, pruning and the sequence;
:func:`next_change` says when the content will change by itself.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from tessera import errors, trustbundle
from tessera.api import meta
from tessera.api import serviceaccount as sa_api
from tessera.core import accountkeys, revocations, settings

BUNDLE_KEY = trustbundle.BUNDLE_KEY
COMPONENT = "trust-bundle"


@dataclasses.dataclass(frozen=True)
class Account:
    """What the bundle needs of a ServiceAccount (kept in an index, one per account)."""

    subject: str
    cidrs: tuple[str, ...]
    disabled: bool

    @classmethod
    def of(cls, sa: sa_api.ServiceAccount) -> Account:
        return cls(sa.subject, tuple(sorted(sa.spec.allowed_cidrs)), sa.spec.disabled)


def notable(account: Account | None) -> Account | None:
    """The account if it shows in a bundle by itself (source ranges, or disabled); None for one that
    does not: an enabled account without ranges shows only through keys registered for it."""
    return account if account is not None and (account.cidrs or account.disabled) else None


def wakes_publisher(remembered: Account | None, account: Account | None, keyed: bool) -> bool:
    """Whether an account's event can change a bundle, so the publisher must render again.

    ``remembered`` is :func:`notable` of the account at its previous event, ``account`` what it is now
    (None: deleted), ``keyed`` whether any key is registered for it now. The bundle sees an account only
    through its ranges and, when keys are registered for it, whether it exists and is enabled (see
    :func:`document`). So a plain account coming, changing or going (most of a burst of thousands)
    changes nothing; a key added or removed wakes the publisher through its own event."""
    return keyed or notable(account) != remembered


@dataclasses.dataclass(frozen=True)
class Inputs:
    issuer_url: str
    issuer_jwks: Mapping[str, Any]  # {"keys": [public JWK, ...]}: see :func:`tessera.core.issuer.jwks`
    account_keys: Sequence[accountkeys.RegisteredKey]
    revocations: revocations.Revocations
    accounts: Sequence[Account]


def unambiguous_keys(inputs: Inputs, now: datetime.datetime) -> list[accountkeys.RegisteredKey]:
    """Active keys of existing, enabled accounts, one per kid. A kid registered for two different
    subjects is left out entirely, so no verifier can be made to accept one account's signature as
    another's; a deleted or disabled account's keys leave at once, without waiting for their status."""
    enabled = {a.subject for a in inputs.accounts if not a.disabled}
    by_kid: dict[str, list[accountkeys.RegisteredKey]] = {}
    for key in inputs.account_keys:
        if key.subject in enabled and accountkeys.active(key, now):
            by_kid.setdefault(key.kid, []).append(key)
    chosen = []
    for kid in sorted(by_kid):
        candidates = by_kid[kid]
        if len({k.subject for k in candidates}) == 1:
            chosen.append(min(candidates, key=lambda k: (k.namespace, k.name)))
    return chosen


def with_grants(shared: trustbundle.Bundle, grants: Mapping[str, trustbundle.Grant]) -> trustbundle.Bundle:
    """One namespace's bundle: the part every namespace shares plus that namespace's grants."""
    return dataclasses.replace(shared, grants=dict(grants))


def document(inputs: Inputs, now: datetime.datetime) -> trustbundle.Bundle:
    """The part of the bundle every namespace shares (no grants, no sequence yet)."""
    live = revocations.pruned(inputs.revocations, now)
    cidrs = {a.subject: tuple(sorted(a.cidrs)) for a in inputs.accounts if a.cidrs}
    return trustbundle.Bundle(
        issuer=inputs.issuer_url,
        issuer_keys=tuple(inputs.issuer_jwks["keys"]),
        account_keys=tuple(k.jwk for k in unambiguous_keys(inputs, now)),
        revocations=tuple(
            trustbundle.Revocation(r.subject, int(r.not_before.timestamp()))
            for r in sorted(live.values(), key=lambda r: r.subject)
        ),
        accounts={subject: cidrs[subject] for subject in sorted(cidrs)},
    )


def render(bundle: trustbundle.Bundle) -> str:
    return trustbundle.render(bundle)


def next_change(inputs: Inputs, now: datetime.datetime) -> datetime.datetime | None:
    """When the bundle changes without any input changing: a key expires or a revocation is pruned."""
    moments = [r.prune_after for r in inputs.revocations.values() if r.prune_after > now]
    expiry = accountkeys.next_expiry(inputs.account_keys, now)
    if expiry is not None:
        moments.append(expiry)
    return min(moments, default=None)


def fits(text: str, limit: int) -> bool:
    return len(text.encode()) <= limit


def next_sequence(previous: int | None, now: datetime.datetime) -> int:
    """One more than the previous bundle's, and never less than ``now`` in milliseconds: so the
    sequence also grows across a lost ConfigMap or a reinstall, where the previous one is unknown
    (sidecars still holding an old bundle must accept the new one)."""
    return max((previous or 0) + 1, int(now.timestamp() * 1000))


CONFIGMAP_KEYS = frozenset({BUNDLE_KEY, trustbundle.ISSUER_CA_KEY})


def _parsed(held: str | None) -> trustbundle.Bundle | None:
    if not held:
        return None
    try:
        return trustbundle.parse(held)
    except errors.BundleError:
        return None


def held_content(data: Mapping[str, str] | None) -> tuple[str, str | None] | None:
    """What a bundle ConfigMap's data holds: (the bundle as :func:`render` writes it without its
    sequence, the issuer CA beside it); None when it holds no readable, sequenced bundle, or other
    keys besides (someone's: replaced)."""
    data = data or {}
    parsed = _parsed(data.get(BUNDLE_KEY))
    if parsed is None or parsed.sequence is None or not set(data) <= CONFIGMAP_KEYS:
        return None
    return render(dataclasses.replace(parsed, sequence=None)), data.get(trustbundle.ISSUER_CA_KEY)


def planned_data(
    content: str, issuer_ca: str | None, current: Mapping[str, str] | None, now: datetime.datetime
) -> dict[str, str] | None:
    """The data to write into a namespace's bundle ConfigMap, given the unsequenced ``content`` (from
    :func:`render`) and what the ConfigMap holds now; None when it holds this content already, under
    any sequence. A bundle that cannot be read, has no sequence yet, or has keys beside it that are
    not Tessera's, is replaced."""
    if held_content(current) == (content, issuer_ca or None):
        return None
    previous = _parsed((current or {}).get(BUNDLE_KEY))
    sequenced = dataclasses.replace(
        trustbundle.parse(content), sequence=next_sequence(previous.sequence if previous else None, now)
    )
    data = {BUNDLE_KEY: render(sequenced)}
    if issuer_ca:
        data[trustbundle.ISSUER_CA_KEY] = issuer_ca
    return data


def build_configmap(namespace: str, data: Mapping[str, str], resource_version: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": settings.TRUST_BUNDLE_CONFIGMAP,
        "namespace": namespace,
        "labels": {meta.MANAGED_BY_LABEL: meta.MANAGED_BY_VALUE, meta.PART_OF_LABEL: COMPONENT},
    }
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version  # a replace that fails if anyone wrote since the read
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": dict(data)}
