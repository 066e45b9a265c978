"""The Role resource: a named set of permission strings, and the services the role is relevant to.

A permission is ``namespace.resource.verb`` (auth-daemon style), where the namespace may itself be
dotted: ``net.example.ping.read`` is namespace ``net.example``, resource ``ping``, verb ``read``. So a
permission has at least three dot-separated segments; each is lower-case letters, digits, ``_`` and
``-`` (starting and ending with a letter or digit), or exactly ``*``, a wildcard for one whole
segment that the consumer interprets. The API server checks the pattern, so ``kubectl apply`` refuses
a malformed permission, and ``x-kubernetes-list-type: set`` refuses duplicates.
"""

from __future__ import annotations

from typing import Annotated

import pydantic

from tessera.api import meta

INFO = meta.KindInfo(
    kind="Role",
    plural="roles",
    singular="role",
    short_names=("trole", "tessera-role"),
    description="A Tessera role: permission strings (namespace.resource.verb) and the services they concern. "
    "RoleBindings in the same namespace grant it to principals.",
    columns=(
        *meta.READY_COLUMNS,
        meta.PrinterColumn("Description", ".spec.description", priority=1, description="What the role is for"),
        meta.AGE_COLUMN,
    ),
)

# One segment: a lower-case word (inner ``_`` and ``-`` allowed) or a whole-segment wildcard.
PERMISSION_SEGMENT = r"([a-z0-9]([a-z0-9_-]*[a-z0-9])?|\*)"
PERMISSION_PATTERN = rf"^{PERMISSION_SEGMENT}(\.{PERMISSION_SEGMENT}){{2,}}$"
MAX_PERMISSIONS = 256
MAX_SERVICES = 64

Permission = Annotated[
    str,
    pydantic.Field(
        max_length=253,
        pattern=PERMISSION_PATTERN,
        description="namespace.resource.verb, e.g. net.example.ping.read; a segment may be * (any).",
    ),
]
ServiceName = Annotated[
    str,
    pydantic.Field(
        min_length=1,
        max_length=253,
        pattern=meta.DNS1123_SUBDOMAIN,
        description="A service name, a DNS-1123 subdomain such as billing.shop.svc or devices.example.com.",
    ),
]


class RoleSpec(meta.Model):
    permissions: list[Permission] = pydantic.Field(
        min_length=1,
        max_length=MAX_PERMISSIONS,
        description="The permissions the role grants, each namespace.resource.verb; no duplicates.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    services: list[ServiceName] = pydantic.Field(
        default_factory=list,
        max_length=MAX_SERVICES,
        description="The services the role is relevant to; its members take part in them.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    description: str | None = pydantic.Field(default=None, max_length=1024, description="What the role is for.")


class RoleStatus(meta.Model):
    conditions: list[meta.Condition] = pydantic.Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None


class Role(meta.Resource):
    spec: RoleSpec
    status: RoleStatus = pydantic.Field(default_factory=RoleStatus)
