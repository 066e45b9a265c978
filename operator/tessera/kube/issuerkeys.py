"""The issuer key Secret: created once, whoever gets there first; read by everyone else."""

from __future__ import annotations

import datetime

from tessera.core import issuer, secrets, settings
from tessera.kube import client, objects


async def load_or_create(kube: client.Clients, cfg: settings.Settings, now: datetime.datetime) -> issuer.KeySet:
    """Create the key Secret if absent and return the key set that is stored (ours or a racing peer's)."""
    candidate = secrets.build_issuer_keys_secret(issuer.initial(cfg.algorithm, now), cfg)
    stored = await objects.create_secret_if_absent(kube, candidate)
    return issuer.loads(objects.secret_text(stored, "keys.json"))
