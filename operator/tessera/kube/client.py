"""The Kubernetes client: configuration, a thread hop for the blocking client, error translation.

The official client blocks, so every call runs in a worker thread of the client's own pool (the
connection pool has a connection for each, and for each informer's watch) and the operator's event loop stays
free for Kopf's watches. Every call has a timeout: a hung connection fails like any other transient
error instead of holding a thread forever. Errors come back as :mod:`tessera.errors`: an answer
with an HTTP status by its status, no answer at all (refused, reset, timed out) as
:class:`errors.Unavailable`, so callers retry both the same way and log one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import kubernetes
import urllib3
from kubernetes.client import exceptions as k8s_exceptions

from tessera import errors

T = TypeVar("T")

_BY_STATUS: dict[int, type[errors.KubeError]] = {
    404: errors.NotFound,
    409: errors.Conflict,
    403: errors.Forbidden,
    422: errors.Invalid,
}
THREADS = 16  # concurrent API calls
WATCHES = 8  # connections held by informers' watches (each in a thread of its own), beside the calls
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0


@dataclasses.dataclass(frozen=True)
class Clients:
    api: kubernetes.client.ApiClient
    core: kubernetes.client.CoreV1Api
    custom: kubernetes.client.CustomObjectsApi
    pool: concurrent.futures.ThreadPoolExecutor | None = None  # None: asyncio's default pool
    observe: Callable[[str, str], None] | None = None  # (verb, outcome) of every call, for metrics

    def to_dict(self, obj: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.api.sanitize_for_serialization(obj)
        return result

    async def call(self, what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run one blocking client call in a thread, with a timeout; failures become :class:`errors.KubeError`."""
        return await call(self, what, fn, *args, **kwargs)


def connect(threads: int = THREADS, observe: Callable[[str, str], None] | None = None) -> Clients:
    """In-cluster configuration when running in a Pod, the current kubeconfig context otherwise."""
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)
    config.connection_pool_maxsize = threads + WATCHES
    api = kubernetes.client.ApiClient(config)
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="kube")
    return Clients(api, kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api), pool, observe)


def translate(exc: k8s_exceptions.ApiException, what: str) -> errors.KubeError:
    kind = _BY_STATUS.get(exc.status or 0, errors.KubeError)
    return kind(f"{what}: {exc.status} {exc.reason}", status=exc.status)


def unavailable(exc: BaseException, what: str) -> errors.Unavailable:
    """No answer from the API server: say which kind of failure in stable words (urllib3's messages
    hold object addresses and ports, which would make every failure look new)."""
    reason = getattr(exc, "reason", None)
    cause = type(reason if isinstance(reason, BaseException) else exc).__name__
    return errors.Unavailable(f"{what}: the API server did not answer ({cause})")


def verb_of(fn: Callable[..., Any]) -> str:
    """The API verb of a client method, by its name (``patch_namespaced_secret`` -> ``patch``)."""
    name = getattr(fn, "__name__", "") or getattr(getattr(fn, "func", None), "__name__", "")
    return name.split("_", 1)[0] or "call"


async def call(kube: Clients, what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """:meth:`Clients.call`; ``what`` names the call in error messages (never with a secret in it)."""
    kwargs.setdefault("_request_timeout", (CONNECT_TIMEOUT, READ_TIMEOUT))
    job = functools.partial(contextvars.copy_context().run, functools.partial(fn, *args, **kwargs))
    outcome = "ok"
    try:
        return await asyncio.get_running_loop().run_in_executor(kube.pool, job)
    except k8s_exceptions.ApiException as exc:
        outcome = str(exc.status or "error")
        raise translate(exc, what) from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        outcome = "unavailable"
        raise unavailable(exc, what) from None  # its traceback says nothing the message does not
    finally:
        if kube.observe is not None:
            kube.observe(verb_of(fn), outcome)


async def available(kube: Clients) -> bool:
    """Whether the API server answers at all (GET /version, which every identity may read)."""
    try:
        await kube.call("probing the API server", kubernetes.client.VersionApi(kube.api).get_code)
    except errors.Unavailable:
        return False
    except errors.KubeError:
        return True  # it answered, even if with an error
    return True
