"""``tessera can-i <principal> <permission> -n <namespace>``: what the sidecar would answer, and why."""

from __future__ import annotations

import sys
from typing import Any

import pydantic
from kubernetes.client import exceptions as k8s_exceptions

from tessera import errors, trustbundle
from tessera.api import meta
from tessera.api import role as role_api
from tessera.api import rolebinding as rb_api
from tessera.core import access, settings
from tessera.kube import client


def _items(kube: client.Clients, namespace: str, plural: str) -> list[dict[str, Any]]:
    try:
        listed = kube.custom.list_namespaced_custom_object(meta.GROUP, meta.VERSION, namespace, plural)
    except k8s_exceptions.ApiException as exc:
        raise client.translate(exc, f"listing {plural} in {namespace}") from exc
    return list(kube.to_dict(listed).get("items") or [])


def _parsed(kind: type[meta.Resource], items: list[dict[str, Any]]) -> list[Any]:
    out = []
    for item in items:
        try:
            out.append(kind.parse(item))
        except pydantic.ValidationError:
            continue
    return out


def _bundle_grants(kube: client.Clients, namespace: str) -> dict[str, list[str]] | None:
    try:
        found = kube.core.read_namespaced_config_map(settings.TRUST_BUNDLE_CONFIGMAP, namespace)
    except k8s_exceptions.ApiException as exc:
        if exc.status == 404:  # no bundle in this namespace: an answer, not an error
            return None
        raise client.translate(exc, f"reading the trust bundle of {namespace}") from exc
    text = (kube.to_dict(found).get("data") or {}).get(trustbundle.BUNDLE_KEY)
    if not text:
        return None
    grants = trustbundle.parse(text).grants
    return {principal: list(grant.permissions) for principal, grant in grants.items()}


def run(principal: str, permission: str, namespace: str) -> int:
    try:
        kube = client.connect()
        roles = {r.name: r for r in _parsed(role_api.Role, _items(kube, namespace, role_api.INFO.plural))}
        bindings = _parsed(rb_api.RoleBinding, _items(kube, namespace, rb_api.INFO.plural))
        grants = _bundle_grants(kube, namespace)
    except (errors.TesseraError, OSError) as exc:
        print(f"tessera can-i: {exc}", file=sys.stderr)
        return 2
    because = access.bindings_granting(principal, permission, namespace, bindings, roles)
    answer = access.answer(principal, permission, namespace, grants, because)
    print("\n".join(answer.lines(principal, permission, namespace)))
    return 0 if answer.allowed else 1
