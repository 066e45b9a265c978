"""Reading and writing the Secrets and ConfigMaps Tessera owns; writes happen only on change."""

from __future__ import annotations

import base64
import datetime
from typing import Any

from tessera import errors
from tessera.api import meta
from tessera.kube import client


def _name(manifest: dict[str, Any]) -> tuple[str, str]:
    return manifest["metadata"]["namespace"], manifest["metadata"]["name"]


def is_ours(obj: dict[str, Any]) -> bool:
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
            if not is_ours(current):
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
    if not is_ours(current) or not (current.get("data") or any(k in annotations for k in annotation_keys)):
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


async def read_configmap(kube: client.Clients, namespace: str, name: str) -> dict[str, Any] | None:
    """The whole ConfigMap (with its resourceVersion), or None when it does not exist."""
    try:
        found = await client.call(
            f"reading ConfigMap {namespace}/{name}", kube.core.read_namespaced_config_map, name, namespace
        )
    except errors.NotFound:
        return None
    return kube.to_dict(found)


async def put_configmap(kube: client.Clients, manifest: dict[str, Any]) -> None:
    """Create the ConfigMap, or, when the manifest carries the resourceVersion it was planned from,
    replace it only if nobody wrote it since (:class:`tessera.errors.Conflict` otherwise)."""
    namespace, name = _name(manifest)
    what = f"writing ConfigMap {namespace}/{name}"
    if manifest["metadata"].get("resourceVersion") is None:
        await client.call(what, kube.core.create_namespaced_config_map, namespace, manifest)
    else:
        await client.call(what, kube.core.replace_namespaced_config_map, name, namespace, manifest)


async def read_configmap_data(kube: client.Clients, namespace: str, name: str) -> dict[str, str] | None:
    """The ConfigMap's data, or None when it does not exist."""
    try:
        found = await client.call(
            f"reading ConfigMap {namespace}/{name}", kube.core.read_namespaced_config_map, name, namespace
        )
    except errors.NotFound:
        return None
    data: dict[str, str] = kube.to_dict(found).get("data") or {}
    return data


async def delete_configmap_if_ours(kube: client.Clients, namespace: str, name: str) -> bool:
    """Delete a ConfigMap Tessera wrote; leave anyone else's alone. Return whether it was deleted."""
    what = f"deleting ConfigMap {namespace}/{name}"
    try:
        current = kube.to_dict(await client.call(what, kube.core.read_namespaced_config_map, name, namespace))
        if not is_ours(current):
            return False
        await client.call(what, kube.core.delete_namespaced_config_map, name, namespace)
    except errors.NotFound:
        return False
    return True


async def post_event(
    kube: client.Clients, involved: dict[str, str], namespace: str, reason: str, message: str, kind: str = "Warning"
) -> None:
    """Record an Event about ``involved`` (apiVersion, kind, name, uid) in ``namespace``."""
    now = datetime.datetime.now(datetime.UTC)
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
        "involvedObject": involved,
        "reason": reason,
        "message": message[:1024],
        "type": kind,
        "source": {"component": "tessera"},
        "firstTimestamp": now.isoformat(),
        "lastTimestamp": now.isoformat(),
        "count": 1,
        "reportingComponent": "tessera",
    }
    await client.call(f"posting an Event in {namespace}", kube.core.create_namespaced_event, namespace, body)


async def patch_status(kube: client.Clients, plural: str, namespace: str, name: str, status: dict[str, Any]) -> bool:
    """Merge ``status`` into a Tessera resource's status; False when the resource is gone."""
    what = f"updating the status of {plural}/{name} in {namespace}"
    try:
        await client.call(
            what,
            kube.custom.patch_namespaced_custom_object_status,
            meta.GROUP,
            meta.VERSION,
            namespace,
            plural,
            name,
            {"status": status},
        )
    except errors.NotFound:
        return False
    return True
