"""Reading and writing the Secrets and ConfigMaps Tessera owns; writes happen only on change."""

from __future__ import annotations

import base64
from typing import Any

from tessera import errors
from tessera.api import meta
from tessera.kube import client


def _name(manifest: dict[str, Any]) -> tuple[str, str]:
    return manifest["metadata"]["namespace"], manifest["metadata"]["name"]


def _is_ours(obj: dict[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return bool(labels.get(meta.MANAGED_BY_LABEL) == meta.MANAGED_BY_VALUE)


async def create_secret_if_absent(kube: client.Clients, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create the Secret, or return the one that exists: when replicas race, exactly one create wins."""
    namespace, name = _name(manifest)
    try:
        created = await client.call(
            f"creating Secret {namespace}/{name}", kube.core.create_namespaced_secret, namespace, manifest
        )
    except errors.Conflict:
        existing = await client.call(
            f"reading Secret {namespace}/{name}", kube.core.read_namespaced_secret, name, namespace
        )
        return kube.to_dict(existing)
    return kube.to_dict(created)


def secret_text(secret: dict[str, Any], key: str) -> str:
    data = secret.get("data") or {}
    if key not in data:
        raise errors.KeyMaterialError(f"Secret {secret['metadata']['name']} has no {key!r}")
    return base64.b64decode(data[key]).decode()


async def write_owned_secret(kube: client.Clients, manifest: dict[str, Any], exists: bool) -> None:
    """Create or patch a Secret Tessera owns; refuse to overwrite one it does not."""
    namespace, name = _name(manifest)
    what = f"writing Secret {namespace}/{name}"
    if not exists:
        try:
            await client.call(what, kube.core.create_namespaced_secret, namespace, manifest)
            return
        except errors.Conflict:
            current = kube.to_dict(await client.call(what, kube.core.read_namespaced_secret, name, namespace))
            if not _is_ours(current):
                raise errors.Conflict(f"Secret {namespace}/{name} exists and is not managed by Tessera") from None
    await client.call(what, kube.core.patch_namespaced_secret, name, namespace, manifest)


async def withdraw_token(kube: client.Clients, namespace: str, name: str, annotation_keys: list[str]) -> bool:
    """Empty a Tessera token Secret (data and token facts); return whether anything was removed."""
    what = f"withdrawing the token in Secret {namespace}/{name}"
    try:
        current = kube.to_dict(await client.call(what, kube.core.read_namespaced_secret, name, namespace))
    except errors.NotFound:
        return False
    annotations = current["metadata"].get("annotations") or {}
    if not _is_ours(current) or not (current.get("data") or any(k in annotations for k in annotation_keys)):
        return False
    patch = {"data": None, "metadata": {"annotations": dict.fromkeys(annotation_keys)}}
    await client.call(what, kube.core.patch_namespaced_secret, name, namespace, patch)
    return True


async def ensure_configmap(kube: client.Clients, manifest: dict[str, Any]) -> bool:
    """Create or update a ConfigMap when its data differ; return whether it was written."""
    namespace, name = _name(manifest)
    what = f"writing ConfigMap {namespace}/{name}"
    try:
        current = kube.to_dict(await client.call(what, kube.core.read_namespaced_config_map, name, namespace))
    except errors.NotFound:
        try:
            await client.call(what, kube.core.create_namespaced_config_map, namespace, manifest)
            return True
        except errors.Conflict:
            current = kube.to_dict(await client.call(what, kube.core.read_namespaced_config_map, name, namespace))
    if current.get("data") == manifest.get("data"):
        return False
    await client.call(what, kube.core.patch_namespaced_config_map, name, namespace, manifest)
    return True
