"""The trust bundle publisher: one background task that keeps every opted-in namespace's bundle current.

It wakes when an input changed (the hub), when a bundle ConfigMap changed in the cluster (an informer
watches every one of them by name), or when the bundle changes by itself (a key expires, a revocation
is pruned); renders the bundle once, and writes it only where the content differs from what the
namespace holds, with the next sequence number (read from the ConfigMap it replaces, which must be
unchanged since that read). A bundle someone deleted or overwrote is therefore written again within
moments. A bundle over the size limit is not written at all: the namespace gets a Warning event
instead, and its previous bundle stays whole.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tessera import errors, trustbundle
from tessera.core import bundles, clock, settings
from tessera.kube import objects
from tessera.operator import rolebindings, runtime, state

logger = logging.getLogger("tessera.bundles")

DEBOUNCE_SECONDS = 0.05  # a burst of changes becomes one write per namespace
WRITERS = 16


def digest(held: tuple[str, str | None] | None) -> str:
    """A digest of a bundle ConfigMap's content (see :func:`bundles.held_content`): what the informer
    keeps of each bundle, and what is compared with the bundle wanted."""
    return hashlib.sha256(json.dumps(held).encode()).hexdigest()


def observed_bundle(obj: dict[str, Any]) -> str:
    """What the bundle informer keeps of a trust bundle ConfigMap: a digest of its content, whatever
    its sequence (a damaged one digests as None, which no wanted bundle does)."""
    return digest(bundles.held_content(obj.get("data")))


def inputs(rt: runtime.Runtime) -> bundles.Inputs:
    ix = rt.indexes
    return bundles.Inputs(
        issuer_url=rt.cfg.issuer,
        issuer_jwks=rt.issuer_keys.published,
        account_keys=[e.trusted for store in ix.account_keys.values() for e in store if e.trusted is not None],
        revocations=rt.revocations.current,
        accounts=[bundles.Account.of(sa) for store in ix.accounts.values() for sa in store],
    )


def account_event(rt: runtime.Runtime, ref: runtime.Key, keyed: bool) -> None:
    """An account's event: wake the publisher only if it can change a bundle (see
    :func:`bundles.wakes_publisher`); remember what the account shows by itself for its next event."""
    sa = runtime.first(rt.indexes.accounts, ref)
    account = bundles.Account.of(sa) if sa is not None else None
    if bundles.wakes_publisher(rt.bundle_accounts.get(ref), account, keyed):
        rt.hub.touch()
    shown = bundles.notable(account)
    if shown is None:
        rt.bundle_accounts.pop(ref, None)
    else:
        rt.bundle_accounts[ref] = shown


class Publisher:
    def __init__(self, rt: runtime.Runtime) -> None:
        self.rt, self.cfg = rt, rt.cfg
        self.published: dict[str, str] = {}  # namespace -> digest of the content it holds, as last written or seen
        self.warned: dict[str, str] = {}  # namespace -> digest of the oversized content it was warned about
        self.failed = state.Warned()
        # namespace -> (its inputs: shared part, grants version, issuer CA; the digest and size of its
        # bundle): a round renders only the namespaces whose grants changed, unless the shared part
        # (keys, revocations, accounts) did. Not the text: fifty namespaces' texts were 5 MiB kept for
        # writes that seldom come; a write renders its text again.
        self.rendered: dict[str, tuple[tuple[str, int, str | None], str, int]] = {}
        self.ca_error: str | None = None

    def wanted(
        self, namespace: str, inputs: tuple[str, int, str | None], render: Callable[[], str]
    ) -> tuple[str, int, str | None]:
        """The digest and size of the namespace's bundle, rendered again only when its inputs changed;
        and the text when it was rendered (None: from the cache)."""
        cached = self.rendered.get(namespace)
        if cached is not None and cached[0] == inputs:
            return cached[1], cached[2], None
        text = render()
        wanted, size = digest((text, inputs[2])), len(text.encode())
        self.rendered[namespace] = (inputs, wanted, size)
        return wanted, size, text

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

    def _held(self, namespace: str) -> str | None:
        """The digest of what the namespace's ConfigMap holds now, as the informer last saw it."""
        return self.rt.bundles.get(namespace, settings.TRUST_BUNDLE_CONFIGMAP)

    async def sync(
        self,
        namespaces: Mapping[str, str],
        inputs_for: Callable[[str], tuple[str, int]],
        render_for: Callable[[str], str],
        now: datetime.datetime,
    ) -> bool:
        """Bring every namespace (name -> uid) to its bundle; drop bundles where the opt-in is gone.
        ``inputs_for`` tells what a namespace's bundle is made of (shared part, grants version),
        ``render_for`` renders it.

        Return whether everything succeeded (failures are retried on the next round)."""
        gate = asyncio.Semaphore(WRITERS)

        async def one(namespace: str, coro: Any) -> bool:
            async with gate:
                try:
                    await coro
                except errors.KubeError as exc:
                    self.rt.metrics.bundle_writes.labels("failed").inc()
                    if self.failed.first(namespace, str(exc)):
                        logger.warning("Failed to update the trust bundle in %s, will retry: %s", namespace, exc)
                    return False
                self.failed.clear(namespace)
                return True

        ca = self.issuer_ca()
        for gone in set(self.rendered) - set(namespaces):
            del self.rendered[gone]
        jobs, largest = [], 0
        for ns, uid in namespaces.items():
            wanted, size, text = self.wanted(ns, (*inputs_for(ns), ca), functools.partial(render_for, ns))
            largest = max(largest, size)
            if self.published.get(ns) != wanted or self._held(ns) != wanted:
                text = render_for(ns) if text is None else text
                jobs.append(one(ns, self._write(ns, uid, text, ca, wanted, now)))
        self.rt.metrics.bundle_largest.set(largest)
        jobs += [one(ns, self._withdraw(ns)) for ns in list(self.published) if ns not in namespaces]
        return all(await asyncio.gather(*jobs))

    async def _write(
        self, namespace: str, uid: str, content: str, ca: str | None, wanted: str, now: datetime.datetime
    ) -> None:
        name = settings.TRUST_BUNDLE_CONFIGMAP
        current = await objects.read_configmap(self.rt.kube, namespace, name)
        data = bundles.planned_data(content, ca, current and current.get("data"), now)
        if data is None:
            self.rt.metrics.bundle_writes.labels("unchanged").inc()
        else:
            text = data[trustbundle.BUNDLE_KEY]
            if not bundles.fits(text, self.cfg.bundle_max_bytes):
                self.rt.metrics.bundle_writes.labels("too_large").inc()
                await self._warn_oversized(namespace, uid, text, wanted)
                return
            version = current["metadata"]["resourceVersion"] if current else None
            await objects.put_configmap(self.rt.kube, bundles.build_configmap(namespace, data, version))
            self.rt.metrics.bundle_writes.labels("written").inc()
            self.rt.metrics.bundle_bytes.observe(len(text.encode()))
            if self.published.get(namespace) == wanted:  # it held this bundle, and someone changed or deleted it
                self.rt.metrics.healed.labels("trust_bundle").inc()
                logger.warning("Restored the trust bundle in %s/%s", namespace, name)
            else:
                logger.info("Updated the trust bundle in %s/%s", namespace, name)
        self.published[namespace] = wanted
        self.warned.pop(namespace, None)

    async def _warn_oversized(self, namespace: str, uid: str, text: str, wanted: str) -> None:
        # Keyed on the content's digest, not the text's: the text carries a time-based sequence, so
        # every round over the same oversized content would otherwise look new and warn again.
        if self.warned.get(namespace) == wanted:
            return
        message = (
            f"the trust bundle would be {len(text.encode())} bytes, over the limit of {self.cfg.bundle_max_bytes};"
            " the previous bundle was kept unchanged. Remove unused ServiceAccountKeys or split tenants."
        )
        involved = objects.involved("v1", "Namespace", "", namespace, uid) | {"namespace": namespace}
        await objects.post_event(self.rt.kube, involved, namespace, "TrustBundleTooLarge", message)
        self.rt.metrics.warnings.labels("TrustBundleTooLarge").inc()
        logger.error("Did not update the trust bundle in %s: %s", namespace, message)
        self.warned[namespace] = wanted

    async def _withdraw(self, namespace: str) -> None:
        if await objects.delete_configmap_if_ours(self.rt.kube, namespace, settings.TRUST_BUNDLE_CONFIGMAP):
            self.rt.metrics.bundle_writes.labels("removed").inc()
            logger.info("Removed the trust bundle from %s: the namespace no longer opts in", namespace)
        self.published.pop(namespace, None)
        self.warned.pop(namespace, None)


async def publish_forever(rt: runtime.Runtime) -> None:
    """Runs for the operator's lifetime, from the moment every index is filled."""
    await rt.hub.indexed.wait()
    await rt.grants.built.wait()  # a bundle without its grants would refuse everyone for a moment
    await asyncio.to_thread(rt.bundles.synced.wait)  # what every namespace holds: compared before writing
    publisher = Publisher(rt)

    async def publish() -> float:
        await rt.activity.wait_active()  # a replica paused by peering writes nothing
        now = clock.utcnow()
        await rt.revocations.prune(now)
        current = inputs(rt)
        shared = bundles.document(current, now)
        shared_text = bundles.render(shared)
        namespaces = {ns: uid for ns, store in rt.indexes.bundle_namespaces.items() for uid in store}

        def inputs_for(namespace: str) -> tuple[str, int]:
            return shared_text, rolebindings.grants_version(rt, namespace)

        def render_for(namespace: str) -> str:
            return bundles.render(bundles.with_grants(shared, rolebindings.bundle_grants(rt, namespace)))

        ok = await publisher.sync(namespaces, inputs_for, render_for, now)
        pause = state.seconds_until(bundles.next_change(current, now))
        return pause if ok else min(pause, state.RETRY_SECONDS)

    async def wait(seconds: float) -> None:
        await rt.hub.wait(seconds)
        await asyncio.sleep(DEBOUNCE_SECONDS)

    await state.forever("to publish trust bundles", logger, publish, wait)
