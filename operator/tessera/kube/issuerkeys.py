"""The issuer key Secret: created once, whoever gets there first; rotated with optimistic concurrency."""

from __future__ import annotations

import datetime

from tessera import errors
from tessera.core import issuer, secrets, settings
from tessera.kube import client, objects

KEYS_DATA_KEY = "keys.json"


async def load_or_create(kube: client.Clients, cfg: settings.Settings, now: datetime.datetime) -> issuer.KeySet:
    """Create the key Secret if absent and return the key set that is stored (ours or a racing peer's)."""
    candidate = secrets.build_issuer_keys_secret(issuer.initial(cfg.algorithm, now), cfg)
    stored = await objects.create_secret_if_absent(kube, candidate)
    return issuer.loads(objects.secret_text(stored, KEYS_DATA_KEY))


async def rotate(kube: client.Clients, cfg: settings.Settings, now: datetime.datetime) -> issuer.KeySet | None:
    """Apply the rotation schedule to the stored key set; return the new set, or None when nothing was
    due or a peer changed the Secret first (its change arrives through the watch)."""
    name, namespace = settings.ISSUER_KEYS_SECRET, cfg.namespace
    what = f"rotating the issuer keys in Secret {namespace}/{name}"
    stored = kube.to_dict(await client.call(what, kube.core.read_namespaced_secret, name, namespace))
    keyset = issuer.loads(objects.secret_text(stored, KEYS_DATA_KEY))
    plan = issuer.rotation(keyset, cfg, now)
    if not plan.changes:
        return None
    new = issuer.rotated(keyset, plan, cfg, now)
    manifest = secrets.build_issuer_keys_secret(new, cfg)
    manifest["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"]
    try:
        await client.call(what, kube.core.replace_namespaced_secret, name, namespace, manifest)
    except errors.Conflict:
        return None
    return new
