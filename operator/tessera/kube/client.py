"""The Kubernetes client: configuration, a thread hop for the blocking client, error translation.

The official client blocks, so every call runs in a worker thread (``asyncio.to_thread``) and the
operator's event loop stays free for Kopf's watches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import kubernetes
from kubernetes.client import exceptions as k8s_exceptions

from tessera import errors

T = TypeVar("T")

_BY_STATUS: dict[int, type[errors.KubeError]] = {
    404: errors.NotFound,
    409: errors.Conflict,
    403: errors.Forbidden,
    422: errors.Invalid,
}


@dataclasses.dataclass(frozen=True)
class Clients:
    api: kubernetes.client.ApiClient
    core: kubernetes.client.CoreV1Api
    custom: kubernetes.client.CustomObjectsApi

    def to_dict(self, obj: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.api.sanitize_for_serialization(obj)
        return result


def connect() -> Clients:
    """In-cluster configuration when running in a Pod, the current kubeconfig context otherwise."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    api = kubernetes.client.ApiClient()
    return Clients(api=api, core=kubernetes.client.CoreV1Api(api), custom=kubernetes.client.CustomObjectsApi(api))


def translate(exc: k8s_exceptions.ApiException, what: str) -> errors.KubeError:
    kind = _BY_STATUS.get(exc.status or 0, errors.KubeError)
    return kind(f"{what}: {exc.status} {exc.reason}", status=exc.status)


async def call(what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run one blocking client call in a thread; ApiException becomes a :class:`errors.KubeError`."""
    try:
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
    except k8s_exceptions.ApiException as exc:
        raise translate(exc, what) from exc
