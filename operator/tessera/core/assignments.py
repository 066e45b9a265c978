"""Member assignments: what one RoleBinding yields, from its facts, its role and its namespace's services.

A binding in namespace ``ns`` gives each member it binds one assignment with scope ``namespaces/<ns>``
and one per service with scope ``services/<service>``, where the services are the role's plus the
namespace's (annotation ``iam.tessera.dev/services``). Members are principals, named by one
deterministic key: a service account by its subject URN, a user by ``user:<issuer>#<subject>`` (an
identity is bound to its issuer: the same subject at two issuers is two principals).

:func:`evaluate` runs named checks in order; the first that fires gives the reason, and the Ready
message carries every finding::

    role missing         -> Ready=False RoleNotFound            nothing is bound
    a member twice       -> Ready=False DuplicateMembers        everything is bound, once
    account missing      -> Ready=False ServiceAccountNotFound  every other member is bound
    otherwise            -> Ready=True  Bound

Ready=False therefore means "the spec is not in effect exactly as written". A missing account gets
nothing (no assignments, no grants) until it exists, so a name cannot be squatted into grants that
were meant for an account since deleted; the binding is bound for it as soon as it appears.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import re
from collections.abc import Container, Iterable, Sequence
from typing import Any, Literal

from tessera.api import meta, serviceaccount
from tessera.api import role as role_api
from tessera.api import rolebinding as rb_api
from tessera.core import conditions

SERVICES_ANNOTATION = f"{meta.GROUP}/services"
NAMESPACE_SCOPE = "namespaces/"
SERVICE_SCOPE = "services/"

BOUND = "Bound"
ROLE_NOT_FOUND = "RoleNotFound"
DUPLICATE_MEMBERS = "DuplicateMembers"
ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"

_SERVICE_NAME = re.compile(meta.DNS1123_SUBDOMAIN)
_LISTED = 10  # names shown in a message before "and N more"

Key = tuple[str, str]
"""(namespace, name) of a Role, RoleBinding or ServiceAccount."""


@dataclasses.dataclass(frozen=True)
class Principal:
    """A member of a binding. ``key`` names it everywhere; ``subject`` is the sub of its tokens."""

    kind: Literal["serviceAccount", "user"]
    key: str
    subject: str
    issuer: str | None = None  # users only; a service account's issuer is the operator's
    namespace: str | None = None  # service accounts only
    name: str | None = None  # service accounts only

    @staticmethod
    def service_account(namespace: str, name: str) -> Principal:
        return _account_principal(namespace, name)

    @staticmethod
    def user(issuer: str, subject: str) -> Principal:
        return _user_principal(issuer, subject)

    @property
    def account(self) -> Key | None:
        """(namespace, name) of the ServiceAccount; None for a user."""
        if self.namespace is None or self.name is None:
            return None
        return (self.namespace, self.name)

    @property
    def label(self) -> str:
        """How messages name it."""
        return f"{self.namespace}/{self.name}" if self.account else self.key


# One shared instance per principal: a principal is listed in many bindings (10,000 bindings of 3 members
# over 2,000 principals held 30,000 copies, about 7 MiB). Bounded, so principals long gone are dropped.
PRINCIPALS_SHARED = 65_536


@functools.lru_cache(maxsize=PRINCIPALS_SHARED)
def _account_principal(namespace: str, name: str) -> Principal:
    urn = serviceaccount.subject_urn(namespace, name)
    return Principal("serviceAccount", urn, urn, namespace=namespace, name=name)


@functools.lru_cache(maxsize=PRINCIPALS_SHARED)
def _user_principal(issuer: str, subject: str) -> Principal:
    return Principal("user", f"user:{issuer}#{subject}", subject, issuer=issuer)


def principal_of(member: rb_api.Member, binding_namespace: str) -> Principal:
    if member.service_account is not None:
        return Principal.service_account(
            member.service_account.namespace or binding_namespace, member.service_account.name
        )
    if member.user is None:  # the model refuses this; kept for the type checker
        raise ValueError("a member is a serviceAccount or a user")
    return Principal.user(member.user.issuer, member.user.subject)


@dataclasses.dataclass(frozen=True)
class RoleFacts:
    """What a binding needs of its Role."""

    permissions: frozenset[str]
    services: frozenset[str] = frozenset()

    @classmethod
    def of(cls, role: role_api.Role) -> RoleFacts:
        return cls(frozenset(role.spec.permissions), frozenset(role.spec.services))


@dataclasses.dataclass(frozen=True)
class BindingFacts:
    """What the computation needs of a RoleBinding; members in spec order, duplicates kept."""

    role: str
    members: tuple[Principal, ...]
    generation: int | None = None

    @classmethod
    def of(cls, binding: rb_api.RoleBinding) -> BindingFacts:
        members = tuple(principal_of(m, binding.namespace) for m in binding.spec.members)
        return cls(binding.spec.role_ref.name, members, binding.metadata.generation)


@dataclasses.dataclass(frozen=True)
class Assignment:
    member: str
    scope: str  # namespaces/<ns> or services/<service>
    service: str | None = None  # set on service-level assignments


@dataclasses.dataclass(frozen=True)
class BindingResult:
    ready: bool
    reason: str
    message: str
    services: tuple[str, ...]  # sorted
    assignments: tuple[Assignment, ...]  # sorted by member, then scope (namespaces/ before services/)
    warnings: tuple[tuple[str, str], ...]  # (reason, message) of each check that fired, in check order: a Warning each
    members: tuple[str, ...] = ()  # sorted keys of the principals actually bound
    generation: int | None = None  # of the facts, for observedGeneration


@dataclasses.dataclass(frozen=True)
class _Members:
    unique: tuple[Principal, ...]  # first occurrence of each key, in spec order
    duplicates: tuple[Principal, ...]
    missing: tuple[Principal, ...]  # service accounts that do not exist
    disabled: tuple[Principal, ...]  # service accounts that exist but are disabled


def _members(facts: BindingFacts, accounts: Container[Key], disabled: Container[Key]) -> _Members:
    seen: dict[str, Principal] = {}
    duplicates: dict[str, Principal] = {}
    for principal in facts.members:
        target = duplicates if principal.key in seen else seen
        target.setdefault(principal.key, principal)
    unbound = [p for p in seen.values() if p.account is not None and p.account not in accounts]
    return _Members(
        tuple(seen.values()),
        tuple(duplicates.values()),
        tuple(p for p in unbound if p.account not in disabled),
        tuple(p for p in unbound if p.account in disabled),
    )


def _listed(principals: Sequence[Principal]) -> str:
    names = sorted(p.label for p in principals)
    more = len(names) - _LISTED
    return ", ".join(names[:_LISTED]) + (f" and {more} more" if more > 0 else "")


def _role_missing(namespace: str, facts: BindingFacts, role: RoleFacts | None, members: _Members) -> str | None:
    if role is not None:
        return None
    return f"Role {facts.role} not found in namespace {namespace}; nothing is bound until it exists."


def _duplicated(namespace: str, facts: BindingFacts, role: RoleFacts | None, members: _Members) -> str | None:
    if not members.duplicates:
        return None
    return f"Members listed more than once (bound once): {_listed(members.duplicates)}."


def _accounts_missing(namespace: str, facts: BindingFacts, role: RoleFacts | None, members: _Members) -> str | None:
    if not members.missing:
        return None
    return f"ServiceAccounts not found, not bound until they exist: {_listed(members.missing)}."


_CHECKS = ((ROLE_NOT_FOUND, _role_missing), (DUPLICATE_MEMBERS, _duplicated), (ACCOUNT_NOT_FOUND, _accounts_missing))


def assignments_of(namespace: str, members: Iterable[str], services: Iterable[str]) -> tuple[Assignment, ...]:
    """One assignment per member x scope and per member x service, sorted and deduplicated."""
    scope = f"{NAMESPACE_SCOPE}{namespace}"
    # "namespaces/..." sorts before "services/...": with sorted inputs the output is sorted as built.
    scopes = [(f"{SERVICE_SCOPE}{s}", s) for s in sorted(set(services))]
    found: list[Assignment] = []
    for member in sorted(set(members)):
        found.append(Assignment(member, scope))
        found.extend([Assignment(member, service_scope, s) for service_scope, s in scopes])
    return tuple(found)


def evaluate(
    namespace: str,
    facts: BindingFacts,
    role: RoleFacts | None,
    namespace_services: frozenset[str],
    accounts: Container[Key],
    disabled: Container[Key] = frozenset(),
) -> BindingResult:
    """What the binding ``namespace/<name>`` with ``facts`` yields; ``accounts`` holds the enabled
    ServiceAccounts and ``disabled`` the disabled ones. A disabled account is not bound while it is
    disabled; that is the account owner's choice, not a fault of the binding, so it is noted in the
    message without a warning."""
    members = _members(facts, accounts, disabled)
    findings = [(reason, m) for reason, check in _CHECKS if (m := check(namespace, facts, role, members)) is not None]
    services = tuple(sorted(namespace_services | (role.services if role else frozenset())))
    unbound = {p.key for p in members.missing + members.disabled}
    bound = () if role is None else tuple(sorted({p.key for p in members.unique} - unbound))
    if findings:
        ready, reason, message = False, findings[0][0], " ".join(m for _, m in findings)
    else:
        ready, reason = True, BOUND
        message = (
            f"Role {facts.role} bound to {len(bound)} members in namespace {namespace} and {len(services)} services."
        )
    if members.disabled:
        message += f" Disabled ServiceAccounts, not bound while disabled: {_listed(members.disabled)}."
    return BindingResult(
        ready=ready,
        reason=reason,
        message=message,
        services=services,
        assignments=assignments_of(namespace, bound, services),
        warnings=tuple(findings),
        members=bound,
        generation=facts.generation,
    )


def parse_services_annotation(text: str | None) -> frozenset[str]:
    """Services from ``iam.tessera.dev/services: "a.svc, b.example.com"``; blanks and invalid names are skipped."""
    names = (part.strip() for part in (text or "").split(","))
    return frozenset(n for n in names if n and len(n) <= 253 and _SERVICE_NAME.fullmatch(n))


def role_status(role: role_api.Role, now: datetime.datetime) -> dict[str, Any]:
    """The whole Role status (JSON form): a Role the API server accepted is valid (its schema checks
    every permission), so Ready=True, Accepted, with its count of permissions."""
    gen = role.metadata.generation
    condition = conditions.ready(True, "Accepted", f"{len(role.spec.permissions)} permissions", gen)
    return role_api.RoleStatus(
        conditions=conditions.set_condition(role.status.conditions, condition, now), observed_generation=gen
    ).wire()


def binding_status(
    previous: Sequence[meta.Condition],
    result: BindingResult,
    now: datetime.datetime,
    limit: int = rb_api.MAX_STATUS_ASSIGNMENTS,
) -> dict[str, Any]:
    """The whole RoleBinding status (JSON form) for ``result``, listing at most ``limit`` assignments;
    ``previous`` are the conditions it has now (their transition times are kept when nothing flipped)."""
    total = len(result.assignments)
    message = result.message + (f" memberAssignments lists the first {limit} of {total}." if total > limit else "")
    condition = conditions.ready(result.ready, result.reason, message, result.generation)
    status = rb_api.RoleBindingStatus(
        conditions=conditions.set_condition(previous, condition, now),
        observed_generation=result.generation,
        services=list(result.services),
        member_assignments=[
            rb_api.MemberAssignment(member=a.member, scope=a.scope, service=a.service)
            for a in result.assignments[:limit]
        ],
        assignment_count=total,
    )
    return status.wire()
