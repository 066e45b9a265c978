"""The issuer key Secret: read, created once (whoever gets there first), replaced with optimistic concurrency.

Only I/O: what to put in it (a first key set, a rotation) is decided in :mod:`tessera.core.issuer`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tessera import errors
from tessera.core import issuer, manifests, settings
from tessera.kube import client, objects


@dataclasses.dataclass(frozen=True)
class Stored:
    """The key Secret as stored: its resourceVersion and key set, or why the key set is unreadable."""

    version: str
    keyset: issuer.KeySet | None
    problem: str = ""


def parse(obj: dict[str, Any]) -> Stored:
    """A key Secret (as the API server returns it) -> :class:`Stored`; never raises, never echoes key material."""
    try:
        return Stored(objects.version_of(obj), issuer.loads(objects.secret_text(obj, manifests.ISSUER_KEYS_DATA_KEY)))
    except errors.KeyMaterialError as exc:
        return Stored(objects.version_of(obj), None, str(exc))


async def create(kube: client.Clients, cfg: settings.Settings, keyset: issuer.KeySet) -> Stored:
    """Create the key Secret with ``keyset`` unless it exists; what is stored now (ours or a racing peer's)."""
    return parse(await objects.create_secret_if_absent(kube, manifests.build_issuer_keys_secret(keyset, cfg)))


async def read(kube: client.Clients, cfg: settings.Settings) -> Stored | None:
    found = await objects.read_secret(kube, cfg.namespace, settings.ISSUER_KEYS_SECRET)
    return None if found is None else parse(found)


async def replace(kube: client.Clients, cfg: settings.Settings, keyset: issuer.KeySet, version: str) -> str:
    """Write ``keyset`` over version ``version`` of the Secret (:class:`errors.Conflict` when it changed
    since); return the new version."""
    name, namespace = settings.ISSUER_KEYS_SECRET, cfg.namespace
    manifest = manifests.build_issuer_keys_secret(keyset, cfg)
    manifest["metadata"]["resourceVersion"] = version
    what = f"writing the issuer keys in Secret {namespace}/{name}"
    return objects.version_of(await kube.call(what, kube.core.replace_namespaced_secret, name, namespace, manifest))
