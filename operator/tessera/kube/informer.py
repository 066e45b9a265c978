"""A small informer: list, then watch, one kind of object, keeping a parsed copy of each in memory.

The issuer service reads accounts, keys, providers, its key Secret and the revocations from such
caches instead of the API server on every request; the operator keeps its RoleBindings (the kind it
has most of) and the ConfigMaps and Secrets it watches by name this way. Staleness is the watch's
delay (milliseconds on a healthy API server); where that matters (is this account disabled?) the
issuer also does one consistent read per request. The watch runs in a daemon thread (the Kubernetes
client blocks). Objects are read as JSON (never as the client's model classes) and the list comes in
pages, so only one page and the parsed values are ever held, never every body at once. The store is
replaced entry by entry, which the event loop reads without locks (single dict operations; copy it
with :meth:`snapshot` to iterate). A watch that ends or fails is resumed from its last
resourceVersion, or relisted after a 410 Gone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import kubernetes
from kubernetes.client import exceptions as k8s_exceptions
from kubernetes.watch import watch as k8s_watch

T = TypeVar("T")
Key = tuple[str, str]  # (namespace or "", name)
log = logging.getLogger("tessera.informer")
WATCH_SECONDS = 240
RETRY_SECONDS = 2.0
PAGE = 500


class Informer(Generic[T]):
    """Objects returned by ``list_fn`` (a Kubernetes client list method, called with ``kwargs``),
    parsed by ``parse`` (None leaves an object out). ``on_change`` is called from the informer's
    thread with the key of an object that changed, or with None after a (re)list, when anything may
    have."""

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

    def snapshot(self) -> dict[Key, T]:
        """A copy of the store, safe to iterate while the watch goes on (the copy is one C call)."""
        return dict(self.items)

    @staticmethod
    def _key(obj: dict[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        return (meta.get("namespace") or "", meta.get("name") or "")

    def _put(self, obj: dict[str, Any]) -> None:
        key, parsed = self._key(obj), self._parse(obj)
        if parsed is None:
            self.items.pop(key, None)
        else:
            self.items[key] = parsed

    def _relist(self) -> str:
        fresh: dict[Key, T] = {}
        token, version = "", ""
        while True:
            page = {"limit": PAGE, **({"_continue": token} if token else {})}
            listed = json.loads(self._list(**self._kwargs, **page, _preload_content=False).data)
            for obj in listed.get("items") or []:
                parsed = self._parse(obj)
                if parsed is not None:
                    fresh[self._key(obj)] = parsed
            meta = listed.get("metadata") or {}
            version, token = str(meta.get("resourceVersion") or version), meta.get("continue") or ""
            del listed
            if not token:
                break
        self.items = fresh
        self.synced.set()
        self._changed(None)
        return version

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
        response = self._list(
            **self._kwargs, watch=True, resource_version=version, timeout_seconds=WATCH_SECONDS,
            allow_watch_bookmarks=True, _preload_content=False,
        )  # fmt: skip
        try:
            for line in k8s_watch.iter_resp_lines(response):
                if self._stopping.is_set():
                    break
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return ""
                    raise RuntimeError(f"watch error {obj.get('code')}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    self.items.pop(self._key(obj), None)
                else:
                    self._put(obj)
                self._changed(self._key(obj))
        finally:
            response.release_conn()
        return version


class Spread(Generic[T]):
    """One informer cluster-wide, or one per namespace (when RBAC allows no more), read as one store."""

    def __init__(self, make: Callable[[str | None], Informer[T]], namespaces: list[str]) -> None:
        """``make(None)``: the cluster-wide informer; ``make(namespace)``: one for that namespace."""
        self._by_namespace = {ns: make(ns) for ns in namespaces}
        self._all = list(self._by_namespace.values()) or [make(None)]

    @property
    def informers(self) -> list[Informer[T]]:
        return list(self._all)

    def get(self, namespace: str, name: str) -> T | None:
        informer = self._by_namespace.get(namespace) if self._by_namespace else self._all[0]
        return informer.get(namespace, name) if informer is not None else None

    def snapshot(self) -> dict[Key, T]:
        found: dict[Key, T] = {}
        for informer in self._all:
            found.update(informer.snapshot())
        return found

    def synced(self) -> bool:
        return all(informer.synced.is_set() for informer in self._all)
