"""The trust bundle: everything a verifier in a namespace needs, in one deterministic JSON file.

``bundle.json`` in the ConfigMap ``tessera-trust-bundle`` of every namespace labelled
``iam.tessera.dev/trust-bundle=enabled``::

    {"version": 1,
     "issuer": "https://...",                       # iss of operator-minted tokens
     "issuerKeys": {"keys": [JWK, ...]},            # incl. the next key, published before it signs
     "serviceAccountKeys": {"keys": [JWK + "sub" (+ "exp"), ...]},  # self-signed tokens: iss = sub
     "revocations": [{"sub": URN, "notBefore": unix seconds}, ...],
     "accounts": {URN: {"cidrs": [...]}},           # source ranges, for self-signed tokens too
     "grants": {principal: {"permissions": [...], "services": [...]}}}  # this namespace's RoleBindings

A principal is a service account's URN or ``user:<issuer>#<subject>`` (an identity is bound to its
issuer).

Keys are sorted and the JSON is compact with sorted keys, so equal inputs give equal bytes and an
unchanged bundle is never rewritten. Time enters only through expiry and pruning; :func:`next_change`
says when the content will change by itself.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any

from tessera.api import meta
from tessera.api import serviceaccount as sa_api
from tessera.core import accountkeys, revocations, settings

FORMAT_VERSION = 1
BUNDLE_KEY = "bundle.json"
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


def with_grants(shared: Mapping[str, Any], grants: Mapping[str, Any]) -> dict[str, Any]:
    """One namespace's bundle: the document every namespace shares plus that namespace's grants."""
    return {**shared, "grants": dict(grants)}


def document(inputs: Inputs, now: datetime.datetime) -> dict[str, Any]:
    live = revocations.pruned(inputs.revocations, now)
    cidrs = {a.subject: sorted(a.cidrs) for a in inputs.accounts if a.cidrs}
    return {
        "version": FORMAT_VERSION,
        "issuer": inputs.issuer_url,
        "issuerKeys": dict(inputs.issuer_jwks),
        "serviceAccountKeys": {"keys": [k.jwk for k in unambiguous_keys(inputs, now)]},
        "revocations": [
            {"sub": r.subject, "notBefore": int(r.not_before.timestamp())}
            for r in sorted(live.values(), key=lambda r: r.subject)
        ],
        "accounts": {subject: {"cidrs": cidrs[subject]} for subject in sorted(cidrs)},
    }


def render(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def next_change(inputs: Inputs, now: datetime.datetime) -> datetime.datetime | None:
    """When the bundle changes without any input changing: a key expires or a revocation is pruned."""
    moments = [r.prune_after for r in inputs.revocations.values() if r.prune_after > now]
    expiry = accountkeys.next_expiry(inputs.account_keys, now)
    if expiry is not None:
        moments.append(expiry)
    return min(moments, default=None)


def fits(text: str, limit: int) -> bool:
    return len(text.encode()) <= limit


def build_configmap(namespace: str, text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": settings.TRUST_BUNDLE_CONFIGMAP,
            "namespace": namespace,
            "labels": {meta.MANAGED_BY_LABEL: meta.MANAGED_BY_VALUE, meta.PART_OF_LABEL: COMPONENT},
        },
        "data": {BUNDLE_KEY: text},
    }
