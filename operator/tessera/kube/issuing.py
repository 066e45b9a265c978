"""What the issuer service asks the API server: TokenReviews, consistent reads of the principal it is
about to issue for, and the assertion ids it has seen (replay protection shared by every replica).

Replays: each accepted assertion's ``jti`` (with its subject) becomes a Lease in the issuer's
namespace named by a digest of both; creating it is atomic, so when two replicas receive the same
assertion at once exactly one create succeeds and the other answers ``invalid_grant``. Leases live
until the assertion expires (plus the leeway) and are then swept.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Callable
from typing import Any

import kubernetes

from tessera import errors
from tessera.api import identityprovider as idp_api
from tessera.api import meta
from tessera.api import serviceaccount as sa_api
from tessera.api import serviceaccountkey as sak_api
from tessera.core import exchange
from tessera.kube import client

JTI_COMPONENT = "assertion-jti"
EXPIRES_ANNOTATION = f"{meta.GROUP}/expires-at"
SERVICE_ACCOUNT_USER = "system:serviceaccount:"


@dataclasses.dataclass(frozen=True)
class Reviewed:
    """A Kubernetes token the API server accepted: whose it is, and the Pod it is bound to, if any."""

    namespace: str
    name: str
    pod: str | None


async def review(kube: client.Clients, token: str, audience: str) -> Reviewed:
    """TokenReview ``token`` for ``audience``; a refusal says why without repeating the token."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    }
    api = kubernetes.client.AuthenticationV1Api(kube.api)
    result = kube.to_dict(await kube.call("reviewing a Kubernetes token", api.create_token_review, body))
    status = result.get("status") or {}
    if not status.get("authenticated"):
        raise exchange.Refusal(
            exchange.INVALID_GRANT,
            "the Kubernetes API server did not accept the token for audience "
            f"{audience!r} (wrong audience, expired, or its Pod or ServiceAccount is gone)",
        )
    user = status.get("user") or {}
    username = str(user.get("username") or "")
    namespace, _, name = username.removeprefix(SERVICE_ACCOUNT_USER).partition(":")
    if not username.startswith(SERVICE_ACCOUNT_USER) or not namespace or not name:
        raise exchange.Refusal(exchange.INVALID_GRANT, "the Kubernetes token is not a service account's")
    pods = (user.get("extra") or {}).get("authentication.kubernetes.io/pod-name") or [None]
    return Reviewed(namespace, name, pods[0])


async def _get(kube: client.Clients, what: str, getter: Callable[..., Any], *where: str) -> dict[str, Any] | None:
    """A Tessera object by a consistent (quorum) read, or None when it does not exist."""
    try:
        return kube.to_dict(await kube.call(what, getter, meta.GROUP, meta.VERSION, *where))
    except errors.NotFound:
        return None


def _deleting(body: dict[str, Any]) -> bool:
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


async def read_account(kube: client.Clients, namespace: str, name: str) -> exchange.Account:
    """A consistent read of a Tessera ServiceAccount: never older than a stored revocation."""
    what, plural = f"reading ServiceAccount {namespace}/{name}", sa_api.INFO.plural
    body = await _get(kube, what, kube.custom.get_namespaced_custom_object, namespace, plural, name)
    if body is None:
        return exchange.Account(None, (namespace, name))
    return exchange.Account(sa_api.ServiceAccount.parse(body), (namespace, name), _deleting(body))


async def read_key(kube: client.Clients, namespace: str, name: str) -> sak_api.ServiceAccountKey | None:
    """A consistent read of a ServiceAccountKey (None when deleted or being deleted)."""
    what, plural = f"reading ServiceAccountKey {namespace}/{name}", sak_api.INFO.plural
    body = await _get(kube, what, kube.custom.get_namespaced_custom_object, namespace, plural, name)
    return sak_api.ServiceAccountKey.parse(body) if body is not None and not _deleting(body) else None


async def read_provider(kube: client.Clients, name: str) -> idp_api.IdentityProvider | None:
    """A consistent read of an IdentityProvider (None when deleted or being deleted)."""
    what, plural = f"reading IdentityProvider {name}", idp_api.INFO.plural
    body = await _get(kube, what, kube.custom.get_cluster_custom_object, plural, name)
    return idp_api.IdentityProvider.parse(body) if body is not None and not _deleting(body) else None


def _jti_lease(namespace: str, subject: str, jti: str, expires: datetime.datetime) -> dict[str, Any]:
    digest = hashlib.sha256(f"{subject}\0{jti}".encode()).hexdigest()[:40]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": f"tessera-jti-{digest}",
            "namespace": namespace,
            "labels": {meta.MANAGED_BY_LABEL: meta.MANAGED_BY_VALUE, meta.PART_OF_LABEL: JTI_COMPONENT},
            "annotations": {EXPIRES_ANNOTATION: expires.isoformat()},
        },
        "spec": {"holderIdentity": "tessera-issuer"},
    }


async def remember_jti(
    kube: client.Clients, namespace: str, subject: str, jti: str, expires: datetime.datetime
) -> None:
    """Record an assertion's jti; a second use (by any replica) is refused as a replay."""
    api = kubernetes.client.CoordinationV1Api(kube.api)
    lease = _jti_lease(namespace, subject, jti, expires)
    try:
        await kube.call("recording an assertion id", api.create_namespaced_lease, namespace, lease)
    except errors.Conflict as exc:
        raise exchange.Refusal(exchange.INVALID_GRANT, "the assertion was used before (its jti is replayed)") from exc


async def sweep_jtis(kube: client.Clients, namespace: str, now: datetime.datetime) -> int:
    """Delete the jti Leases whose assertions have expired; return how many."""
    api = kubernetes.client.CoordinationV1Api(kube.api)
    selector = f"{meta.MANAGED_BY_LABEL}={meta.MANAGED_BY_VALUE},{meta.PART_OF_LABEL}={JTI_COMPONENT}"
    listed = kube.to_dict(
        await kube.call("listing assertion ids", api.list_namespaced_lease, namespace, label_selector=selector)
    )
    removed = 0
    for lease in listed.get("items") or []:
        stamp = (lease["metadata"].get("annotations") or {}).get(EXPIRES_ANNOTATION, "")
        try:
            expired = datetime.datetime.fromisoformat(stamp) <= now
        except ValueError:
            expired = True
        if expired:
            try:
                name = lease["metadata"]["name"]
                await kube.call("deleting an assertion id", api.delete_namespaced_lease, name, namespace)
                removed += 1
            except errors.NotFound:
                pass
    return removed
