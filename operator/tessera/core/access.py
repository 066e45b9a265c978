"""``tessera can-i``: the answer the sidecar would give, and the RoleBindings that give it.

The answer comes from the namespace's trust bundle grants (what the sidecar reads), with the same
permission matching (:mod:`tessera.permissions`). The explanation comes from the RoleBindings'
member assignments (what the operator bound: disabled accounts are not) and their Roles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from tessera import permissions
from tessera.api import role as role_api
from tessera.api import rolebinding as rb_api


@dataclasses.dataclass(frozen=True)
class Because:
    binding: str  # namespace/name
    role: str
    matched: tuple[str, ...]  # the role's permissions that cover the one asked about


@dataclasses.dataclass(frozen=True)
class Answer:
    allowed: bool
    because: tuple[Because, ...]
    source: str  # where the yes/no came from

    def lines(self, principal: str, permission: str, namespace: str) -> list[str]:
        verdict = "yes" if self.allowed else "no"
        out = [
            f"{verdict}: {principal} {'may' if self.allowed else 'may not'} {permission} in {namespace} ({self.source})"
        ]
        out += [f"  granted by RoleBinding {b.binding} (Role {b.role}: {', '.join(b.matched)})" for b in self.because]
        return out


def bindings_granting(
    principal: str,
    permission: str,
    namespace: str,
    bindings: Iterable[rb_api.RoleBinding],
    roles: Mapping[str, role_api.Role],
) -> tuple[Because, ...]:
    """The bindings of ``namespace`` whose member assignments include ``principal`` here and whose Role
    holds a permission covering ``permission``, sorted by name."""
    scope = f"namespaces/{namespace}"
    found = []
    for binding in sorted(bindings, key=lambda b: b.name):
        if not any(a.member == principal and a.scope == scope for a in binding.status.member_assignments):
            continue
        role = roles.get(binding.spec.role_ref.name)
        matched = permissions.covering(role.spec.permissions, permission) if role is not None else []
        if matched:
            found.append(Because(f"{binding.namespace}/{binding.name}", binding.spec.role_ref.name, tuple(matched)))
    return tuple(found)


def answer(
    principal: str,
    permission: str,
    namespace: str,
    bundle_grants: Mapping[str, Iterable[str]] | None,
    because: tuple[Because, ...],
) -> Answer:
    """Yes or no from the bundle's grants when the namespace has a bundle, else from the bindings."""
    if bundle_grants is None:
        return Answer(bool(because), because, "from the RoleBindings; the namespace has no trust bundle")
    granted = frozenset(bundle_grants.get(principal, ()))
    return Answer(permissions.permitted(granted, permission), because, "from the namespace's trust bundle")
