"""Builders for the Secrets and ConfigMaps Tessera owns: a model in, a manifest dict out.

Everything Tessera writes carries ``app.kubernetes.io/managed-by: tessera`` so the operator can
watch just its own objects with a label selector, never every Secret in the cluster.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from typing import Any

from tessera.api import meta
from tessera.api import serviceaccount as sa_api
from tessera.core import issuer, revocations, settings, tokens

TOKEN_SECRET_TYPE = f"{meta.GROUP}/access-token"
TOKEN_FOR_LABEL = f"{meta.GROUP}/service-account"
ISSUER_KEYS_DATA_KEY = "keys.json"  # the issuer key Secret's one entry
TOKEN_KEY = "token"  # noqa: S105 (a data key name, not a secret)

ANNOTATION_PREFIX = f"{meta.GROUP}/token-"
_FACT_FIELDS = ("issued_at", "expires_at", "refresh_at", "alive_until")
# A SHA-256 of the token beside it: a Secret whose token was replaced by hand no longer matches its facts,
# and is replaced. (A digest of a signed token says nothing about it: the signature alone has 256 bits.)
DIGEST_ANNOTATION = ANNOTATION_PREFIX + "sha256"


def token_secret_name(sa: sa_api.ServiceAccount) -> str:
    return f"{sa.name}-tessera-token"


def _labels(component: str, **extra: str) -> dict[str, str]:
    return {meta.MANAGED_BY_LABEL: meta.MANAGED_BY_VALUE, meta.PART_OF_LABEL: component, **extra}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def token_annotations(facts: tokens.ObservedToken) -> dict[str, str]:
    """Non-secret facts about the token, so the operator can plan without reading the token itself."""
    notes = {ANNOTATION_PREFIX + f.replace("_", "-"): getattr(facts, f).isoformat() for f in _FACT_FIELDS}
    notes[ANNOTATION_PREFIX + "key-id"] = facts.key_id
    notes[ANNOTATION_PREFIX + "inputs"] = facts.inputs
    return notes


def token_annotation_keys() -> list[str]:
    return [ANNOTATION_PREFIX + f.replace("_", "-") for f in _FACT_FIELDS] + [
        ANNOTATION_PREFIX + "key-id",
        ANNOTATION_PREFIX + "inputs",
        DIGEST_ANNOTATION,
    ]


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _stored_digest(encoded: str) -> str | None:
    try:
        return hashlib.sha256(base64.b64decode(encoded, validate=True)).hexdigest()
    except (binascii.Error, ValueError):
        return None


def observed_token(annotations: dict[str, str], encoded_token: str | None) -> tokens.ObservedToken | None:
    """Read :func:`token_annotations` back, given the Secret's ``token`` data (base64, as stored). None when
    the Secret holds no token; :data:`tokens.UNKNOWN` when it holds one whose facts are missing or
    unreadable, or that is not the token they describe (so it is replaced or withdrawn)."""
    if encoded_token is None:
        return None
    digest = annotations.get(DIGEST_ANNOTATION)
    if digest is not None and digest != _stored_digest(encoded_token):
        return tokens.UNKNOWN
    try:
        stored = dict(annotations)
        stored.setdefault(ANNOTATION_PREFIX + "alive-until", stored.get(ANNOTATION_PREFIX + "expires-at", ""))
        times = {
            f: datetime.datetime.fromisoformat(stored[ANNOTATION_PREFIX + f.replace("_", "-")]) for f in _FACT_FIELDS
        }
        return tokens.ObservedToken(
            key_id=annotations[ANNOTATION_PREFIX + "key-id"], inputs=annotations[ANNOTATION_PREFIX + "inputs"], **times
        )
    except (KeyError, ValueError):
        return tokens.UNKNOWN


def build_token_secret(sa: sa_api.ServiceAccount, token: str, facts: tokens.ObservedToken) -> dict[str, Any]:
    """The Secret a workload mounts: the token in ``token``; the facts about it in annotations."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": TOKEN_SECRET_TYPE,
        "metadata": {
            "name": token_secret_name(sa),
            "namespace": sa.namespace,
            "labels": _labels("access-token", **{TOKEN_FOR_LABEL: sa.name}),
            "ownerReferences": [meta.owner_reference(sa_api.INFO, sa)],
            "annotations": {**token_annotations(facts), DIGEST_ANNOTATION: token_digest(token)},
        },
        "data": {TOKEN_KEY: _b64(token)},
    }


def build_issuer_keys_secret(keyset: issuer.KeySet, cfg: settings.Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": settings.ISSUER_KEYS_SECRET, "namespace": cfg.namespace, "labels": _labels("issuer-keys")},
        "data": {ISSUER_KEYS_DATA_KEY: _b64(issuer.dumps(keyset))},
    }


def build_jwks_configmap(keyset: issuer.KeySet, cfg: settings.Settings) -> dict[str, Any]:
    """The issuer's public keys, for anyone to read; deterministic JSON so equal keys never rewrite it."""
    document = {"issuer": cfg.issuer, **issuer.jwks(keyset)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": settings.ISSUER_JWKS_CONFIGMAP,
            "namespace": cfg.namespace,
            "labels": _labels("issuer-jwks"),
        },
        "data": {"jwks.json": json.dumps(document, sort_keys=True, separators=(",", ":"))},
    }


REVOCATIONS_KEY = "revocations.json"


def build_revocations_configmap(current: revocations.Revocations, cfg: settings.Settings) -> dict[str, Any]:
    """Where revocations outlive the operator process (subjects and times only, nothing secret)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": settings.REVOCATIONS_CONFIGMAP,
            "namespace": cfg.namespace,
            "labels": _labels("revocations"),
        },
        "data": {REVOCATIONS_KEY: revocations.dumps(current)},
    }
