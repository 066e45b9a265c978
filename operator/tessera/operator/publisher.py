"""The trust bundle publisher: one background task that keeps every opted-in namespace's bundle current.

It wakes when an input changed (the hub) or when the bundle changes by itself (a key expires, a
revocation is pruned), renders the bundle once, and writes it only where the content differs, with
the next sequence number (read from the ConfigMap it replaces, which must be unchanged since that
read). A bundle over the size limit is not written at all: the namespace gets a Warning event
instead, and its previous bundle stays whole.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kopf

from tessera import errors, trustbundle
from tessera.core import bundles, settings
from tessera.kube import client, objects
from tessera.operator import rolebindings, state

logger = logging.getLogger("tessera.bundles")

DEBOUNCE_SECONDS = 0.05  # a burst of changes becomes one write per namespace
WRITERS = 16


def _values(index: kopf.Index[Any, Any]) -> list[Any]:
    return [value for store in index.values() for value in store]


def inputs(memo: Any, indexes: Mapping[str, kopf.Index[Any, Any]]) -> bundles.Inputs:
    cfg: settings.Settings = memo.cfg
    return bundles.Inputs(
        issuer_url=cfg.issuer,
        keyset=memo.issuer_keys.current,
        account_keys=_values(indexes["serviceaccountkeys_index"]),
        revocations=memo.revocations.current,
        accounts=_values(indexes["serviceaccounts_index"]),
    )


class Publisher:
    def __init__(self, kube: client.Clients, cfg: settings.Settings) -> None:
        self.kube, self.cfg = kube, cfg
        # namespace -> (bundle content without its sequence, issuer CA) it holds
        self.published: dict[str, tuple[str, str | None]] = {}
        self.warned: dict[str, str] = {}  # namespace -> digest of the oversized bundle it was warned about
        # namespace -> (shared part, grants version, text): a round re-renders only the namespaces
        # whose grants changed, unless the shared part (keys, revocations, accounts) did.
        self.rendered: dict[str, tuple[str, int, str]] = {}
        self.ca_error: str | None = None

    def text(self, namespace: str, shared: str, version: int, render: Callable[[], str]) -> str:
        """The namespace's bundle text, rendered again only when its inputs changed."""
        cached = self.rendered.get(namespace)
        if cached is not None and cached[0] == shared and cached[1] == version:
            return cached[2]
        text = render()
        self.rendered[namespace] = (shared, version, text)
        return text

    def issuer_ca(self) -> str | None:
        """The issuer service's CA certificate to publish beside the bundle (None: not configured or unreadable)."""
        if not self.cfg.issuer_ca_file:
            return None
        try:
            found = Path(self.cfg.issuer_ca_file).read_text() or None
        except OSError as exc:
            if self.ca_error != exc.strerror:  # once per cause, not at every round
                logger.warning("Could not read the issuer CA %s: %s", self.cfg.issuer_ca_file, exc.strerror)
            self.ca_error = exc.strerror
            return None
        self.ca_error = None
        return found

    async def sync(self, namespaces: Mapping[str, str], text_for: Callable[[str], str], now: datetime.datetime) -> bool:
        """Bring every namespace (name -> uid) to its bundle; drop bundles where the opt-in is gone.

        Return whether everything succeeded (failures are retried on the next round)."""
        gate = asyncio.Semaphore(WRITERS)

        async def one(coro: Any) -> bool:
            async with gate:
                try:
                    await coro
                except errors.KubeError as exc:
                    logger.warning("Failed to update a trust bundle, will retry: %s", exc)
                    return False
                return True

        ca = self.issuer_ca()
        texts = {ns: text_for(ns) for ns in namespaces}
        for gone in set(self.rendered) - set(namespaces):
            del self.rendered[gone]
        jobs = [
            one(self._write(ns, uid, texts[ns], ca, now))
            for ns, uid in namespaces.items()
            if self.published.get(ns) != (texts[ns], ca)
        ]
        jobs += [one(self._withdraw(ns)) for ns in list(self.published) if ns not in namespaces]
        return all(await asyncio.gather(*jobs))

    async def _write(self, namespace: str, uid: str, content: str, ca: str | None, now: datetime.datetime) -> None:
        name = settings.TRUST_BUNDLE_CONFIGMAP
        current = await objects.read_configmap(self.kube, namespace, name)
        data = bundles.planned_data(content, ca, current and current.get("data"), now)
        if data is not None:
            text = data[trustbundle.BUNDLE_KEY]
            if not bundles.fits(text, self.cfg.bundle_max_bytes):
                await self._warn_oversized(namespace, uid, text)
                return
            version = current["metadata"]["resourceVersion"] if current else None
            await objects.put_configmap(self.kube, bundles.build_configmap(namespace, data, version))
            logger.info("Updated the trust bundle in %s/%s", namespace, name)
        self.published[namespace] = (content, ca)
        self.warned.pop(namespace, None)

    async def _warn_oversized(self, namespace: str, uid: str, text: str) -> None:
        digest = hashlib.sha256(text.encode()).hexdigest()
        if self.warned.get(namespace) == digest:
            return
        message = (
            f"the trust bundle would be {len(text.encode())} bytes, over the limit of {self.cfg.bundle_max_bytes};"
            " the previous bundle was kept unchanged. Remove unused ServiceAccountKeys or split tenants."
        )
        involved = {"apiVersion": "v1", "kind": "Namespace", "name": namespace, "namespace": namespace, "uid": uid}
        await objects.post_event(self.kube, involved, namespace, "TrustBundleTooLarge", message)
        logger.error("Did not update the trust bundle in %s: %s", namespace, message)
        self.warned[namespace] = digest

    async def _withdraw(self, namespace: str) -> None:
        if await objects.delete_configmap_if_ours(self.kube, namespace, settings.TRUST_BUNDLE_CONFIGMAP):
            logger.info("Removed the trust bundle from %s: the namespace no longer opts in", namespace)
        self.published.pop(namespace, None)
        self.warned.pop(namespace, None)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def publish_forever(memo: Any, indexes: Mapping[str, kopf.Index[Any, Any]]) -> None:
    """Runs for the operator's lifetime, from the moment every index is filled."""
    await memo.hub.indexed.wait()
    await memo.grants.built.wait()  # a bundle without its grants would refuse everyone for a moment
    publisher = Publisher(memo.kube, memo.cfg)

    async def publish() -> float:
        await memo.activity.wait_active()  # a replica paused by peering writes nothing
        now = _utcnow()
        await memo.revocations.prune(now)
        current = inputs(memo, indexes)
        shared = bundles.document(current, now)
        shared_text = bundles.render(shared)
        namespaces = {ns: uid for ns, store in indexes["trust_bundle_namespaces_index"].items() for uid in store}

        def text_for(namespace: str) -> str:
            return publisher.text(
                namespace,
                shared_text,
                rolebindings.grants_version(memo, namespace),
                lambda: bundles.render(bundles.with_grants(shared, rolebindings.bundle_grants(memo, namespace))),
            )

        ok = await publisher.sync(namespaces, text_for, now)
        pause = state.seconds_until(bundles.next_change(current, now))
        return pause if ok else min(pause, state.RETRY_SECONDS)

    async def wait(seconds: float) -> None:
        await memo.hub.wait(seconds)
        await asyncio.sleep(DEBOUNCE_SECONDS)

    await state.forever("to publish trust bundles", logger, publish, wait)
