"""The RoleBinding resource: grants a Role of its own namespace to members, in that namespace.

A member is exactly one of a Tessera ServiceAccount (of any namespace; the binding's own when none is
given) or a user named by the issuer that vouches for it plus its subject there: an identity is bound
to its issuer, so the same subject at two issuers is two principals. The binding's scope is its
namespace. The operator writes what it yields into the status: one member assignment per member x
scope (``namespaces/<ns>``) and one per member x service (``services/<service>``), where the services
are the role's plus the namespace's (annotation ``iam.tessera.dev/services``).

As with Kubernetes RoleBindings, ``roleRef`` is immutable: point a binding at another role by
deleting and recreating it, so nobody's grants silently change meaning.
"""

from __future__ import annotations

from typing import Self

import pydantic

from tessera.api import meta

INFO = meta.KindInfo(
    kind="RoleBinding",
    plural="rolebindings",
    singular="rolebinding",
    short_names=("trb", "tessera-rb"),
    description="Grants a Tessera Role of the same namespace to service accounts and users, in that namespace "
    "and in the services of the role and the namespace.",
    columns=(
        *meta.READY_COLUMNS,
        meta.PrinterColumn("Role", ".spec.roleRef.name", description="The Role granted"),
        meta.AGE_COLUMN,
    ),
)

# An OIDC issuer: https, no query, fragment or user info. Without '#', ``user:<issuer>#<subject>`` keys
# are unambiguous.
HTTPS_URL = r"^https://[^\s/?#@]+(/[^\s?#]*)?$"
MAX_MEMBERS = 1000
# memberAssignments lists at most this many (about 0.5 MB), so a status write stays well inside the API
# server's request limit; assignmentCount always says how many there are.
MAX_STATUS_ASSIGNMENTS = 5000


class RoleRef(meta.Model):
    name: str = pydantic.Field(
        min_length=1,
        max_length=253,
        pattern=meta.DNS1123_SUBDOMAIN,
        description="Name of the Tessera Role, in the binding's namespace.",
    )


class ServiceAccountMember(meta.Model):
    name: str = pydantic.Field(
        min_length=1,
        max_length=253,
        pattern=meta.DNS1123_SUBDOMAIN,
        description="Name of the Tessera ServiceAccount.",
    )
    namespace: str | None = pydantic.Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=meta.DNS1123_LABEL,
        description="Its namespace; empty means the binding's own.",
    )


class UserMember(meta.Model):
    issuer: str = pydantic.Field(
        max_length=512,
        pattern=HTTPS_URL,
        description="The issuer that vouches for the user (iss of its tokens), an https URL compared exactly.",
    )
    subject: str = pydantic.Field(
        min_length=1, max_length=512, description="The user's subject at that issuer (sub of its tokens)."
    )


class Member(meta.Model):
    """A principal: exactly one of a service account or a user."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=meta.rules(
            ("has(self.serviceAccount) != has(self.user)", "set exactly one of serviceAccount or user"),
        )
    )

    service_account: ServiceAccountMember | None = pydantic.Field(default=None, description="A Tessera ServiceAccount.")
    user: UserMember | None = pydantic.Field(default=None, description="A user of an external identity provider.")

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> Self:
        # The API server enforces this with the CEL rule above; the check here keeps Python callers honest.
        if (self.service_account is None) == (self.user is None):
            raise ValueError("set exactly one of serviceAccount or user")
        return self


class RoleBindingSpec(meta.Model):
    role_ref: RoleRef = pydantic.Field(
        description="The Role granted.",
        json_schema_extra=meta.rules(
            (
                "self == oldSelf",
                "roleRef is immutable; delete and recreate the binding (as with Kubernetes RoleBindings)",
            ),
        ),
    )
    members: list[Member] = pydantic.Field(min_length=1, max_length=MAX_MEMBERS, description="Who is granted the role.")


class MemberAssignment(meta.Model):
    """One member x scope (scope namespaces/<ns>), or one member x service (scope services/<service>)."""

    member: str = pydantic.Field(
        description="Principal key: urn:tessera:serviceaccount:<ns>:<name>, or user:<issuer>#<subject>."
    )
    scope: str = pydantic.Field(description="namespaces/<namespace> or services/<service>.")
    service: str | None = pydantic.Field(default=None, description="The service, on service-level assignments.")


class RoleBindingStatus(meta.Model):
    conditions: list[meta.Condition] = pydantic.Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    services: list[str] = pydantic.Field(
        default_factory=list, description="The role's services plus the namespace's, sorted."
    )
    member_assignments: list[MemberAssignment] = pydantic.Field(
        default_factory=list,
        description=f"What the binding yields, sorted by member then scope; the first {MAX_STATUS_ASSIGNMENTS}.",
    )
    assignment_count: int | None = pydantic.Field(
        default=None, description="How many member assignments the binding yields in all."
    )


class RoleBinding(meta.Resource):
    spec: RoleBindingSpec
    status: RoleBindingStatus = pydantic.Field(default_factory=RoleBindingStatus)
