"""Writing a Tessera resource's status, and the Warning events that go with it.

Every reconcile writes through :func:`write`: only when the status differs from the stored one (or
from what this operator wrote a moment ago, while the index still shows the state before it), and
with a Warning for each problem the stored status does not report yet for this generation
(:func:`tessera.core.status.to_warn`). So a bad object gets one Warning per distinct problem per
change, whatever the number of reconciles, retries or restarts, and nothing is logged while nothing
changes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tessera.api import meta
from tessera.core import status
from tessera.kube import objects
from tessera.operator import runtime

logger = logging.getLogger("tessera.status")
CLUSTER_EVENTS = "default"  # where Events about cluster-scoped objects go (as Kopf and kubectl expect)
Findings = Sequence[tuple[str, str]]  # (reason, message) of each problem the new status reports


def stored(rt: runtime.Runtime, kind: str, namespace: str, name: str, indexed: Mapping[str, Any]) -> dict[str, Any]:
    """The status as it is now: what this operator wrote, until the index shows it, else the index's."""
    pending, mine = rt.statuses_written.get((kind, namespace, name))
    return dict(mine if pending and mine is not None else indexed)


async def write(
    rt: runtime.Runtime,
    info: meta.KindInfo,
    obj: meta.Resource,
    current: Mapping[str, Any],
    new: dict[str, Any],
    findings: Findings = (),
) -> bool:
    """Merge ``new`` into the status of ``obj`` if it changes anything; post the Warnings ``findings`` call
    for. ``current`` is :func:`stored`. Return whether the status was written."""
    namespace = obj.metadata.namespace or ""
    if not status.needs_update({k: current.get(k) for k in new}, new):
        return False
    version = await objects.patch_status(rt.kube, info.plural, namespace, obj.name, new)
    if version is None:
        return False  # deleted meanwhile
    rt.statuses_written.wrote((info.kind, namespace, obj.name), version, {**current, **new})
    rt.status_writes += 1
    ref = Ref(info, namespace, obj.name, obj.metadata.uid, obj.metadata.generation)
    await warn(rt, ref, current.get("conditions") or [], findings)
    return True


@dataclasses.dataclass(frozen=True)
class Ref:
    """What a Warning names: the object, and the generation its problems belong to."""

    info: meta.KindInfo
    namespace: str  # "" for a cluster-scoped object
    name: str
    uid: str | None
    generation: int | None


async def warn(rt: runtime.Runtime, ref: Ref, stored: Sequence[Mapping[str, Any]], findings: Findings) -> None:
    """Post a Warning for each of ``findings`` the stored conditions do not report yet."""
    involved = objects.involved(meta.API_VERSION, ref.info.kind, ref.namespace, ref.name, ref.uid)
    for reason, message in status.to_warn({"conditions": list(stored)}, findings, ref.generation):
        await objects.post_event(rt.kube, involved, ref.namespace or CLUSTER_EVENTS, reason, message)
        rt.metrics.warnings.labels(reason).inc()
