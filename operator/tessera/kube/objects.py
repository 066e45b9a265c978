"""Reading and writing the Secrets and ConfigMaps Tessera owns; writes happen only on change."""

from __future__ import annotations

import base64
from typing import Any

from tessera import errors
from tessera.api import meta
from tessera.core import clock
from tessera.kube import client


def _name(manifest: dict[str, Any]) -> tuple[str, str]:
    return manifest["metadata"]["namespace"], manifest["metadata"]["name"]


def is_ours(obj: dict[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return bool(labels.get(meta.MANAGED_BY_LABEL) == meta.MANAGED_BY_VALUE)


async def create_secret_if_absent(kube: client.Clients, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create the Secret, or return the one that exists: when replicas race, exactly one create wins."""
    return (await create_or_read_secret(kube, manifest))[1]


def secret_text(secret: dict[str, Any], key: str) -> str:
    data = secret.get("data") or {}
    if key not in data:
        raise errors.KeyMaterialError(f"Secret {secret['metadata']['name']} has no {key!r}")
    return base64.b64decode(data[key]).decode()


def version_of(obj: Any) -> str:
    """The resourceVersion of an object the client returned (a model or a dict)."""
    if isinstance(obj, dict):
        return str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return str(getattr(getattr(obj, "metadata", None), "resource_version", "") or "")


async def read_secret(kube: client.Clients, namespace: str, name: str) -> dict[str, Any] | None:
    """The Secret, or None when it does not exist (a consistent read, for when an index may lag)."""
    try:
        found = await kube.call(f"reading Secret {namespace}/{name}", kube.core.read_namespaced_secret, name, namespace)
    except errors.NotFound:
        return None
    return kube.to_dict(found)


async def write_owned_secret(kube: client.Clients, manifest: dict[str, Any], exists: bool) -> str:
    """Create or patch a Secret Tessera owns; refuse to overwrite one it does not. Return its resourceVersion."""
    namespace, name = _name(manifest)
    what = f"writing Secret {namespace}/{name}"
    if not exists:
        try:
            return version_of(await kube.call(what, kube.core.create_namespaced_secret, namespace, manifest))
        except errors.Conflict:
            current = kube.to_dict(await kube.call(what, kube.core.read_namespaced_secret, name, namespace))
            if not is_ours(current):
                raise errors.Conflict(f"Secret {namespace}/{name} exists and is not managed by Tessera") from None
    try:
        return version_of(await kube.call(what, kube.core.patch_namespaced_secret, name, namespace, manifest))
    except errors.NotFound:  # deleted since it was seen: create it again
        return version_of(await kube.call(what, kube.core.create_namespaced_secret, namespace, manifest))


async def withdraw_token(kube: client.Clients, namespace: str, name: str, annotation_keys: list[str]) -> str | None:
    """Empty a Tessera token Secret (data and token facts); return the new resourceVersion, or None when
    there was nothing to remove."""
    what = f"withdrawing the token in Secret {namespace}/{name}"
    try:
        current = kube.to_dict(await kube.call(what, kube.core.read_namespaced_secret, name, namespace))
    except errors.NotFound:
        return None
    annotations = current["metadata"].get("annotations") or {}
    if not is_ours(current) or not (current.get("data") or any(k in annotations for k in annotation_keys)):
        return None
    patch = {"data": None, "metadata": {"annotations": dict.fromkeys(annotation_keys)}}
    return version_of(await kube.call(what, kube.core.patch_namespaced_secret, name, namespace, patch))


def _differs(current: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """Whether the stored ConfigMap's data or our labels on it differ from ``manifest``'s."""
    labels = current.get("metadata", {}).get("labels") or {}
    wanted = manifest["metadata"].get("labels") or {}
    return current.get("data") != manifest.get("data") or any(labels.get(k) != v for k, v in wanted.items())


async def ensure_configmap(kube: client.Clients, manifest: dict[str, Any]) -> bool:
    """Create or update a ConfigMap when its data (or Tessera's labels) differ; return whether it was written."""
    namespace, name = _name(manifest)
    what = f"writing ConfigMap {namespace}/{name}"
    try:
        current = kube.to_dict(await kube.call(what, kube.core.read_namespaced_config_map, name, namespace))
    except errors.NotFound:
        try:
            await kube.call(what, kube.core.create_namespaced_config_map, namespace, manifest)
            return True
        except errors.Conflict:
            current = kube.to_dict(await kube.call(what, kube.core.read_namespaced_config_map, name, namespace))
    if not _differs(current, manifest):
        return False
    stray = dict.fromkeys(k for k in current.get("data") or {} if k not in (manifest.get("data") or {}))
    patch = {**manifest, "data": {**stray, **(manifest.get("data") or {})}}  # keys someone added go too
    try:
        await kube.call(what, kube.core.patch_namespaced_config_map, name, namespace, patch)
    except errors.NotFound:  # deleted since it was read
        await kube.call(what, kube.core.create_namespaced_config_map, namespace, manifest)
    return True


async def read_configmap(kube: client.Clients, namespace: str, name: str) -> dict[str, Any] | None:
    """The whole ConfigMap (with its resourceVersion), or None when it does not exist."""
    try:
        found = await kube.call(
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
        await kube.call(what, kube.core.create_namespaced_config_map, namespace, manifest)
    else:
        await kube.call(what, kube.core.replace_namespaced_config_map, name, namespace, manifest)


async def list_bundle_data(kube: client.Clients, name: str) -> list[dict[str, str]]:
    """The data of every ConfigMap named ``name`` in any namespace (the trust bundles, listed by name)."""
    listed = await kube.call(
        f"listing the ConfigMaps named {name}",
        kube.core.list_config_map_for_all_namespaces,
        field_selector=f"metadata.name={name}",
    )
    return [dict(item.get("data") or {}) for item in kube.to_dict(listed).get("items") or []]


async def delete_configmap_if_ours(kube: client.Clients, namespace: str, name: str) -> bool:
    """Delete a ConfigMap Tessera wrote; leave anyone else's alone. Return whether it was deleted."""
    what = f"deleting ConfigMap {namespace}/{name}"
    try:
        current = kube.to_dict(await kube.call(what, kube.core.read_namespaced_config_map, name, namespace))
        if not is_ours(current):
            return False
        await kube.call(what, kube.core.delete_namespaced_config_map, name, namespace)
    except errors.NotFound:
        return False
    return True


async def post_event(
    kube: client.Clients, involved: dict[str, str], namespace: str, reason: str, message: str, kind: str = "Warning"
) -> None:
    """Record an Event about ``involved`` (apiVersion, kind, name, uid) in ``namespace``."""
    now = clock.utcnow()
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
    await kube.call(f"posting an Event in {namespace}", kube.core.create_namespaced_event, namespace, body)


async def patch_status(
    kube: client.Clients, plural: str, namespace: str, name: str, status: dict[str, Any]
) -> str | None:
    """Merge ``status`` into a Tessera resource's status (``namespace`` "" for a cluster-scoped one);
    return the new resourceVersion, None when the resource is gone."""
    what = f"updating the status of {plural}/{name}" + (f" in {namespace}" if namespace else "")
    body = {"status": status}
    custom, group = kube.custom, (meta.GROUP, meta.VERSION)
    try:
        if namespace:
            done = await kube.call(
                what, custom.patch_namespaced_custom_object_status, *group, namespace, plural, name, body
            )
        else:
            done = await kube.call(what, custom.patch_cluster_custom_object_status, *group, plural, name, body)
    except errors.NotFound:
        return None
    return version_of(done)


def involved(api_version: str, kind: str, namespace: str, name: str, uid: str | None) -> dict[str, str]:
    """An Event's involvedObject."""
    ref = {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid or ""}
    return {**ref, "namespace": namespace} if namespace else ref


async def create_or_read_secret(kube: client.Clients, manifest: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Create the Secret unless it exists; (whether this call created it, the Secret as stored)."""
    namespace, name = _name(manifest)
    try:
        created = await kube.call(
            f"creating Secret {namespace}/{name}", kube.core.create_namespaced_secret, namespace, manifest
        )
    except errors.Conflict:
        existing = await kube.call(
            f"reading Secret {namespace}/{name}", kube.core.read_namespaced_secret, name, namespace
        )
        return False, kube.to_dict(existing)
    return True, kube.to_dict(created)


async def set_finalizers(
    kube: client.Clients, plural: str, namespace: str, name: str, finalizers: list[str], version: str | None
) -> str | None:
    """Make ``finalizers`` the resource's list, if it is still at ``version`` (else :class:`errors.Conflict`);
    return the new resourceVersion, None when the resource is gone."""
    body = {"metadata": {"finalizers": finalizers, "resourceVersion": version}}
    what = f"updating the finalizers of {plural}/{name} in {namespace}"
    try:
        done = await kube.call(
            what, kube.custom.patch_namespaced_custom_object, meta.GROUP, meta.VERSION, namespace, plural, name, body
        )
    except errors.NotFound:
        return None
    return version_of(done)
