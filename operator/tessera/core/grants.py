"""Who is granted what, where: every binding's result, every principal's services summary, every
namespace's grants (for its trust bundle) and every principal's permissions by namespace (for tokens).

:func:`compute` derives all of it from scratch; :class:`Engine` keeps it current one change at a
time and says exactly what changed, so the operator writes only those statuses and bundles. Both
follow the assignments: a binding whose role is missing, or a member whose ServiceAccount does not
exist, counts nowhere. Permissions are the union of the roles' strings as written; wildcards are
matched by the consumer, never expanded here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Set
from typing import Any

from tessera.core import assignments
from tessera.core.assignments import BindingFacts, BindingResult, Key, RoleFacts

NO_SERVICES: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What the grants are computed from: the Roles, the RoleBindings and the accounts that exist."""

    roles: Mapping[Key, RoleFacts] = dataclasses.field(default_factory=dict)
    bindings: Mapping[Key, BindingFacts] = dataclasses.field(default_factory=dict)
    namespace_services: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    accounts: Set[Key] = frozenset()  # the ServiceAccounts that exist and are enabled
    disabled: Set[Key] = frozenset()  # those that exist but are disabled (bound nowhere, named in status)


@dataclasses.dataclass(frozen=True)
class Summary:
    """Where one principal is bound: the services summary on its status."""

    services: tuple[str, ...]
    bindings: tuple[Key, ...]
    namespaces: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Grant:
    """What the bindings of one namespace give one principal."""

    permissions: tuple[str, ...]
    services: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Result:
    """Only what exists: principals without assignments and namespaces without grants are absent."""

    bindings: Mapping[Key, BindingResult]
    principals: Mapping[str, Summary]
    grants: Mapping[str, Mapping[str, Grant]]  # namespace -> principal key -> grant
    tokens: Mapping[str, Mapping[str, tuple[str, ...]]]  # principal key -> namespace -> permissions


@dataclasses.dataclass(frozen=True)
class Delta:
    """What one change altered: rewrite these statuses, these namespaces' bundles, these principals' tokens.
    Exact: an item is named if and only if its value in the Result changed (or it appeared or went)."""

    bindings: frozenset[Key] = frozenset()
    principals: frozenset[str] = frozenset()
    grants: frozenset[str] = frozenset()  # namespaces
    tokens: frozenset[str] = frozenset()  # principal keys

    def __bool__(self) -> bool:
        return bool(self.bindings or self.principals or self.grants or self.tokens)


def summary_status(summary: Summary | None) -> dict[str, list[str]]:
    """The part of a ServiceAccount's status the summary owns: empty lists once it is bound nowhere."""
    if summary is None:
        return {"services": [], "boundIn": []}
    return {"services": list(summary.services), "boundIn": [f"{ns}/{name}" for ns, name in summary.bindings]}


def _evaluate(state: Inputs, key: Key) -> BindingResult:
    facts = state.bindings[key]
    role = state.roles.get((key[0], facts.role))
    services = state.namespace_services.get(key[0], NO_SERVICES)
    return assignments.evaluate(key[0], facts, role, services, state.accounts, state.disabled)


def _summary(bindings: Iterable[Key], services: Iterable[str]) -> Summary:
    where = sorted(set(bindings))
    return Summary(tuple(sorted(set(services))), tuple(where), tuple(sorted({ns for ns, _ in where})))


def _grant(permissions: Iterable[str], services: Iterable[str]) -> Grant:
    return Grant(tuple(sorted(set(permissions))), tuple(sorted(set(services))))


def compute(state: Inputs) -> Result:
    """Everything, from scratch. Time O(sum over bindings of members x (services + permissions))."""
    results = {key: _evaluate(state, key) for key in state.bindings}
    where: dict[str, list[Key]] = {}
    services: dict[str, set[str]] = {}
    permissions: dict[tuple[str, str], set[str]] = {}
    grant_services: dict[tuple[str, str], set[str]] = {}
    for key, result in results.items():
        role = state.roles.get((key[0], state.bindings[key].role))
        for principal in result.members:
            where.setdefault(principal, []).append(key)
            services.setdefault(principal, set()).update(result.services)
            pair = (key[0], principal)
            permissions.setdefault(pair, set()).update(role.permissions if role else ())
            grant_services.setdefault(pair, set()).update(result.services)
    grants: dict[str, dict[str, Grant]] = {}
    tokens: dict[str, dict[str, tuple[str, ...]]] = {}
    for namespace, principal in sorted(permissions):
        grant = _grant(permissions[(namespace, principal)], grant_services[(namespace, principal)])
        grants.setdefault(namespace, {})[principal] = grant
        tokens.setdefault(principal, {})[namespace] = grant.permissions
    principals = {p: _summary(where[p], services[p]) for p in sorted(where)}
    return Result(results, principals, grants, tokens)


def _put(mapping: dict[Any, Any], key: Any, value: Any) -> None:
    if value is None:
        mapping.pop(key, None)
    else:
        mapping[key] = value


class Engine:
    """The Result of a changing Inputs, kept current change by change; each change returns its :class:`Delta`.

    Reverse maps (role -> bindings, namespace -> bindings, account -> bindings, principal ->
    namespace -> bindings listing it) find what a change touches. A change re-evaluates only the
    bindings it touches (T), re-summarises only the members of those whose result changed, and
    re-grants only (namespace, member) pairs of T. With m members, s services and r permissions per
    binding and d the number of bindings a principal is listed in, a change costs about
    O(|T| m (s + log) + sum over those members of d (s + r)), independent of how many other bindings,
    principals and namespaces there are. ``set_role`` has T = the bindings naming the role;
    ``set_binding`` T = that binding; ``set_namespace_services`` T = the namespace's bindings;
    ``set_account`` T = the bindings naming the account. Memory is O(size of the state + Result).

    Not thread-safe: call it from one thread (the event loop of async handlers) or under one lock.
    """

    def __init__(self, state: Inputs | None = None) -> None:
        state = state or Inputs()
        self._roles = dict(state.roles)
        self._bindings = dict(state.bindings)
        self._services = {ns: frozenset(s) for ns, s in state.namespace_services.items() if s}
        self._accounts = set(state.accounts)
        self._disabled = set(state.disabled) - self._accounts
        initial = compute(self.state())
        self._results = dict(initial.bindings)
        self._principals = dict(initial.principals)
        self._grants = {ns: dict(g) for ns, g in initial.grants.items()}
        self._tokens = {p: dict(t) for p, t in initial.tokens.items()}
        self._effective = {key: frozenset(r.members) for key, r in self._results.items()}
        self._versions: dict[str, int] = {}  # namespace -> how often its grants changed
        self._by_role: dict[Key, set[Key]] = {}
        self._by_namespace: dict[str, set[Key]] = {}
        self._by_account: dict[Key, set[Key]] = {}
        self._by_principal: dict[str, dict[str, set[Key]]] = {}
        for key, facts in self._bindings.items():
            self._index(key, facts)

    @property
    def result(self) -> Result:
        """The current Result: live views, read them only (see :meth:`snapshot`)."""
        return Result(self._results, self._principals, self._grants, self._tokens)

    def snapshot(self) -> Result:
        """A copy of the current Result that later changes do not alter."""
        grants = {ns: dict(g) for ns, g in self._grants.items()}
        tokens = {p: dict(t) for p, t in self._tokens.items()}
        return Result(dict(self._results), dict(self._principals), grants, tokens)

    def grants_version(self, namespace: str) -> int:
        """A number that changes whenever the namespace's grants do (for caching what is rendered from them)."""
        return self._versions.get(namespace, 0)

    def state(self) -> Inputs:
        return Inputs(
            dict(self._roles),
            dict(self._bindings),
            dict(self._services),
            frozenset(self._accounts),
            frozenset(self._disabled),
        )

    def set_role(self, key: Key, facts: RoleFacts | None) -> Delta:
        if self._roles.get(key) == facts:
            return Delta()
        _put(self._roles, key, facts)
        return self._refresh(self._by_role.get(key, ()))

    def set_binding(self, key: Key, facts: BindingFacts | None) -> Delta:
        old = self._bindings.get(key)
        if old == facts:
            return Delta()
        if old is not None:
            self._unindex(key, old)
        if facts is not None:
            self._index(key, facts)
        _put(self._bindings, key, facts)
        return self._refresh((key,))

    def set_namespace_services(self, namespace: str, services: Iterable[str]) -> Delta:
        """``services`` as :func:`assignments.parse_services_annotation` gives them (never the raw text)."""
        if isinstance(services, str):
            raise TypeError("pass the parsed services, not the annotation text")
        wanted = frozenset(services)
        if self._services.get(namespace, NO_SERVICES) == wanted:
            return Delta()
        _put(self._services, namespace, wanted or None)
        return self._refresh(self._by_namespace.get(namespace, ()))

    def set_account(self, key: Key, exists: bool, enabled: bool = True) -> Delta:
        """The ServiceAccount ``key`` appeared, went, or was disabled or enabled."""
        now_enabled, now_disabled = exists and enabled, exists and not enabled
        if (key in self._accounts, key in self._disabled) == (now_enabled, now_disabled):
            return Delta()
        for members, present in ((self._accounts, now_enabled), (self._disabled, now_disabled)):
            if present:
                members.add(key)
            else:
                members.discard(key)
        return self._refresh(self._by_account.get(key, ()))

    def _index(self, key: Key, facts: BindingFacts) -> None:
        self._by_role.setdefault((key[0], facts.role), set()).add(key)
        self._by_namespace.setdefault(key[0], set()).add(key)
        for principal in facts.members:
            self._by_principal.setdefault(principal.key, {}).setdefault(key[0], set()).add(key)
            if principal.account is not None:
                self._by_account.setdefault(principal.account, set()).add(key)

    def _unindex(self, key: Key, facts: BindingFacts) -> None:
        _discard(self._by_role, (key[0], facts.role), key)
        _discard(self._by_namespace, key[0], key)
        for principal in facts.members:
            by_namespace = self._by_principal.get(principal.key, {})
            _discard(by_namespace, key[0], key)
            if not by_namespace:
                self._by_principal.pop(principal.key, None)
            if principal.account is not None:
                _discard(self._by_account, principal.account, key)

    def _refresh(self, touched: Iterable[Key]) -> Delta:
        bindings: set[Key] = set()
        summaries: set[str] = set()
        pairs: set[tuple[str, str]] = set()
        state = self._view()
        for key in list(touched):
            old = self._results.get(key)
            new = _evaluate(state, key) if key in self._bindings else None
            before, after = self._effective.get(key, frozenset()), frozenset(new.members) if new else frozenset()
            pairs.update((key[0], principal) for principal in before | after)  # a role's permissions may differ
            if new == old:
                continue
            bindings.add(key)
            # A summary sees a binding through its services and whether the principal is bound by it.
            same_services = old is not None and new is not None and old.services == new.services
            summaries.update(before ^ after if same_services else before | after)
            _put(self._results, key, new)
            _put(self._effective, key, after or None)
        principals = frozenset(p for p in summaries if self._resummarise(p))
        namespaces: set[str] = set()
        tokens: set[str] = set()
        for namespace, principal in pairs:
            grant_changed, token_changed = self._regrant(namespace, principal)
            if grant_changed:
                namespaces.add(namespace)
            if token_changed:
                tokens.add(principal)
        return Delta(frozenset(bindings), principals, frozenset(namespaces), frozenset(tokens))

    def _view(self) -> Inputs:
        return Inputs(self._roles, self._bindings, self._services, self._accounts, self._disabled)  # live, read only

    def _bound(self, principal: str) -> Iterable[Key]:
        for keys in self._by_principal.get(principal, {}).values():
            yield from (key for key in keys if principal in self._effective.get(key, ()))

    def _resummarise(self, principal: str) -> bool:
        where = list(self._bound(principal))
        new = _summary(where, (s for key in where for s in self._results[key].services)) if where else None
        if self._principals.get(principal) == new:
            return False
        _put(self._principals, principal, new)
        return True

    def _regrant(self, namespace: str, principal: str) -> tuple[bool, bool]:
        """Recompute one grant; say whether it changed, and whether its permissions (the token's part) did."""
        keys = self._by_principal.get(principal, {}).get(namespace, set())
        bound = [key for key in keys if principal in self._effective.get(key, ())]
        new = None
        if bound:
            roles = [self._roles[(namespace, self._bindings[key].role)] for key in bound]
            services = (s for key in bound for s in self._results[key].services)
            new = _grant((p for role in roles for p in role.permissions), services)
        old = self._grants.get(namespace, {}).get(principal)
        if old == new:
            return False, False
        _put(self._grants.setdefault(namespace, {}), principal, new)
        self._versions[namespace] = self._versions.get(namespace, 0) + 1
        _put(self._tokens.setdefault(principal, {}), namespace, new.permissions if new else None)
        for mapping, inner in ((self._grants, namespace), (self._tokens, principal)):
            if not mapping[inner]:
                del mapping[inner]
        return True, (old.permissions if old else None) != (new.permissions if new else None)


def _discard(index: dict[Any, set[Key]], entry: Any, key: Key) -> None:
    keys = index.get(entry)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[entry]
