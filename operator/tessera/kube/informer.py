"""A small informer: list, then watch, one kind of object, keeping a parsed copy of each in memory.

The issuer service reads accounts, keys, providers, its key Secret and the revocations from such
caches instead of the API server on every request. Staleness is the watch's delay (milliseconds on a
healthy API server); where that matters (is this account disabled?) the issuer also does one
consistent read per request. The watch runs in a daemon thread (the Kubernetes client blocks); the
store is replaced entry by entry, which the event loop reads without locks (single dict operations).
A watch that ends or fails is resumed from its last resourceVersion, or relisted after a 410 Gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import kubernetes
from kubernetes.client import exceptions as k8s_exceptions

T = TypeVar("T")
Key = tuple[str, str]  # (namespace or "", name)
log = logging.getLogger("tessera.informer")
WATCH_SECONDS = 240
RETRY_SECONDS = 2.0


class Informer(Generic[T]):
    """Objects returned by ``list_fn`` (a Kubernetes client list method, called with ``kwargs``),
    parsed by ``parse`` (None leaves an object out). ``on_change`` is called (in the watch thread)
    with the key of each object that changed, or None after a full listing."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        what: str,
        list_fn: Callable[..., Any],
        parse: Callable[[dict[str, Any]], T | None],
        on_change: Callable[[Key | None], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self._api, self.what, self._list, self._parse, self._kwargs = api, what, list_fn, parse, kwargs
        self._on_change = on_change
        self.items: dict[Key, T] = {}
        self.synced = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{what}", daemon=True)

    def start(self) -> Informer[T]:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    def get(self, namespace: str, name: str) -> T | None:
        return self.items.get((namespace, name))

    def _dict(self, obj: Any) -> dict[str, Any]:
        return obj if isinstance(obj, dict) else self._api.sanitize_for_serialization(obj)

    def _put(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        parsed = self._parse(obj)
        if parsed is None:
            self.items.pop(key, None)
        else:
            self.items[key] = parsed

    def _relist(self) -> str:
        listed = self._dict(self._list(**self._kwargs))
        fresh: dict[Key, T] = {}
        for obj in listed.get("items") or []:
            meta = obj.get("metadata") or {}
            parsed = self._parse(obj)
            if parsed is not None:
                fresh[(meta.get("namespace") or "", meta.get("name") or "")] = parsed
        self.items = fresh
        self.synced.set()
        self._changed(None)
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    def _changed(self, key: Key | None) -> None:
        if self._on_change is not None:
            self._on_change(key)

    def _run(self) -> None:
        version = ""
        while not self._stopping.is_set():
            try:
                if not version:
                    version = self._relist()
                version = self._watch(version)
            except k8s_exceptions.ApiException as exc:
                if exc.status == 410:
                    version = ""
                    continue
                log.warning("Watch of %s failed (%s %s); retrying", self.what, exc.status, exc.reason)
                time.sleep(RETRY_SECONDS)
            except Exception as exc:  # the thread must outlive any failure of the connection
                log.warning("Watch of %s failed (%s); retrying", self.what, type(exc).__name__)
                version = ""
                time.sleep(RETRY_SECONDS)

    def _watch(self, version: str) -> str:
        stream = kubernetes.watch.Watch().stream(
            self._list, resource_version=version, timeout_seconds=WATCH_SECONDS, allow_watch_bookmarks=True,
            **self._kwargs,
        )  # fmt: skip
        for event in stream:
            if self._stopping.is_set():
                break
            kind, obj = event["type"], self._dict(event["object"])
            if kind == "ERROR":
                code = obj.get("code")
                if code == 410:
                    return ""
                raise RuntimeError(f"watch error {code}")
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            meta = obj.get("metadata") or {}
            key = (meta.get("namespace") or "", meta.get("name") or "")
            if kind == "DELETED":
                self.items.pop(key, None)
            else:
                self._put(obj)
            self._changed(key)
        return version
