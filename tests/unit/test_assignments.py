"""Member assignments and grants: principal keys, binding checks, services, summaries, token claims, and
the incremental Engine against compute() from scratch (hypothesis)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.api import role as role_api
from tessera.api import rolebinding as rb_api
from tessera.api import serviceaccount as sa_api
from tessera.core import assignments, grants
from tessera.core.assignments import Assignment, BindingFacts, Principal, RoleFacts

NOW = datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.UTC)
IDP1, IDP2 = "https://idp-1.example.com", "https://idp-2.example.com"
ALICE1, ALICE2 = Principal.user(IDP1, "alice"), Principal.user(IDP2, "alice")
BILLING = Principal.service_account("shop", "billing")
AUDIT = Principal.service_account("ops", "audit")
READER = RoleFacts(frozenset({"shop.orders.read", "shop.*.list"}), frozenset({"billing.shop.svc"}))
ACCOUNTS = frozenset({("shop", "billing"), ("ops", "audit")})


def member(**fields: Any) -> rb_api.Member:
    return rb_api.Member.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"serviceAccount": {"name": "billing"}}, "urn:tessera:serviceaccount:shop:billing"),
        ({"serviceAccount": {"name": "billing", "namespace": "shop"}}, "urn:tessera:serviceaccount:shop:billing"),
        ({"serviceAccount": {"name": "audit", "namespace": "ops"}}, "urn:tessera:serviceaccount:ops:audit"),
        ({"user": {"issuer": IDP1, "subject": "alice"}}, f"user:{IDP1}#alice"),
        ({"user": {"issuer": IDP2, "subject": "alice"}}, f"user:{IDP2}#alice"),
        ({"user": {"issuer": IDP1, "subject": "a#b c"}}, f"user:{IDP1}#a#b c"),
    ],
)
def test_principal_key(fields: dict[str, Any], key: str) -> None:
    assert assignments.principal_of(member(**fields), "shop").key == key


def test_same_subject_at_two_issuers_is_two_principals() -> None:
    one = assignments.principal_of(member(user={"issuer": IDP1, "subject": "alice"}), "shop")
    two = assignments.principal_of(member(user={"issuer": IDP2, "subject": "alice"}), "shop")
    assert one.key != two.key and one.subject == two.subject == "alice"
    assert (one.issuer, two.issuer) == (IDP1, IDP2)
    assert (one.kind, one.account, BILLING.kind, BILLING.account) == (
        "user",
        None,
        "serviceAccount",
        ("shop", "billing"),
    )


def test_facts_from_models() -> None:
    body = {
        "metadata": {"name": "readers", "namespace": "shop", "generation": 4},
        "spec": {
            "roleRef": {"name": "reader"},
            "members": [{"serviceAccount": {"name": "billing"}}, {"user": {"issuer": IDP1, "subject": "alice"}}],
        },
    }
    assert BindingFacts.of(rb_api.RoleBinding.parse(body)) == BindingFacts("reader", (BILLING, ALICE1), 4)
    body["spec"]["members"].append({"serviceAccount": {"name": "billing", "namespace": "shop"}})  # type: ignore[index]
    facts = BindingFacts.of(rb_api.RoleBinding.parse(body))
    result = assignments.evaluate("shop", facts, READER, frozenset(), ACCOUNTS)
    assert result.reason == "DuplicateMembers" and result.members == tuple(sorted((BILLING.key, ALICE1.key)))
    role_body = {"metadata": {"name": "reader"}, "spec": {"permissions": ["a.b.c"], "services": ["s.svc"]}}
    assert RoleFacts.of(role_api.Role.parse(role_body)) == RoleFacts(frozenset({"a.b.c"}), frozenset({"s.svc"}))


def evaluate(
    members: tuple[Principal, ...],
    role: RoleFacts | None = READER,
    namespace_services: frozenset[str] = frozenset(),
    accounts: frozenset[tuple[str, str]] = ACCOUNTS,
) -> assignments.BindingResult:
    return assignments.evaluate("shop", BindingFacts("reader", members, 2), role, namespace_services, accounts)


GHOST = Principal.service_account("shop", "ghost")


@pytest.mark.parametrize(
    ("members", "role", "ready", "reason", "bound", "warnings"),
    [
        ((BILLING, ALICE1), READER, True, "Bound", (ALICE1, BILLING), 0),
        ((BILLING,), None, False, "RoleNotFound", (), 1),
        ((BILLING, BILLING, ALICE1), READER, False, "DuplicateMembers", (ALICE1, BILLING), 1),
        ((ALICE1, ALICE2), READER, True, "Bound", (ALICE1, ALICE2), 0),  # two issuers, two principals
        ((BILLING, GHOST), READER, False, "ServiceAccountNotFound", (BILLING,), 1),
        ((GHOST, GHOST, ALICE1), READER, False, "DuplicateMembers", (ALICE1,), 2),
        ((GHOST, GHOST), None, False, "RoleNotFound", (), 3),
    ],
    ids=["bound", "role-missing", "duplicates", "two-issuers", "account-missing", "dup-then-missing", "all-three"],
)
def test_binding_checks(
    members: tuple[Principal, ...],
    role: RoleFacts | None,
    ready: bool,
    reason: str,
    bound: tuple[Principal, ...],
    warnings: int,
) -> None:
    result = evaluate(members, role)
    assert (result.ready, result.reason, len(result.warnings)) == (ready, reason, warnings)
    assert result.members == tuple(sorted(p.key for p in bound))
    assert {a.member for a in result.assignments} == set(result.members)
    assert result.message == " ".join(m for _, m in result.warnings) or result.ready
    assert result.generation == 2


def test_a_disabled_account_is_noted_not_bound_and_not_warned_about() -> None:
    disabled = frozenset({BILLING.account}) if BILLING.account else frozenset()
    result = assignments.evaluate(
        "shop", BindingFacts("reader", (BILLING, ALICE1), 2), READER, frozenset(), ACCOUNTS - disabled, disabled
    )
    assert (result.ready, result.reason, result.warnings) == (True, "Bound", ())
    assert result.members == (ALICE1.key,)
    assert "Disabled ServiceAccounts, not bound while disabled: shop/billing." in result.message
    missing = assignments.evaluate("shop", BindingFacts("reader", (BILLING,), 2), READER, frozenset(), frozenset())
    assert missing.reason == "ServiceAccountNotFound" and "Disabled" not in missing.message


def test_engine_disabling_an_account_unbinds_it_and_names_it() -> None:
    assert BILLING.account is not None
    engine = grants.Engine(
        grants.Inputs(
            roles={("shop", "reader"): READER},
            bindings={("shop", "b"): BindingFacts("reader", (BILLING,))},
            accounts=frozenset({BILLING.account}),
        )
    )
    delta = engine.set_account(BILLING.account, exists=True, enabled=False)
    assert delta.bindings == {("shop", "b")} and delta.tokens == {BILLING.key}
    result = engine.result.bindings[("shop", "b")]
    assert result.ready and not result.members and "not bound while disabled" in result.message
    assert not engine.set_account(BILLING.account, exists=True, enabled=False)
    assert engine.set_account(BILLING.account, exists=False).bindings == {("shop", "b")}
    assert engine.result.bindings[("shop", "b")].reason == "ServiceAccountNotFound"


def test_messages_name_the_culprits_and_stay_short() -> None:
    ghosts = tuple(Principal.service_account("shop", f"ghost-{i:02}") for i in range(25))
    result = evaluate((BILLING, BILLING, *ghosts))
    assert result.warnings[0][0] == "DuplicateMembers" and "shop/billing" in result.warnings[0][1]
    assert result.warnings[1][0] == "ServiceAccountNotFound"
    assert "shop/ghost-00" in result.warnings[1][1] and "and 15 more" in result.warnings[1][1]
    assert "shop/ghost-24" not in result.message


@pytest.mark.parametrize(
    ("role", "namespace_services", "services"),
    [
        (READER, frozenset(), ("billing.shop.svc",)),
        (READER, frozenset({"a.svc", "billing.shop.svc"}), ("a.svc", "billing.shop.svc")),
        (RoleFacts(frozenset({"a.b.c"})), frozenset({"z.svc"}), ("z.svc",)),
        (None, frozenset({"z.svc"}), ("z.svc",)),  # role missing: the namespace's services only
        (RoleFacts(frozenset({"a.b.c"})), frozenset(), ()),
    ],
)
def test_services_are_the_roles_plus_the_namespaces(
    role: RoleFacts | None, namespace_services: frozenset[str], services: tuple[str, ...]
) -> None:
    assert evaluate((BILLING,), role, namespace_services).services == services


def test_assignments_are_member_x_scope_plus_member_x_service_sorted() -> None:
    result = evaluate((BILLING, ALICE1, BILLING), READER, frozenset({"a.svc"}))
    u, sa = ALICE1.key, BILLING.key
    assert result.assignments == (
        Assignment(sa, "namespaces/shop"),
        Assignment(sa, "services/a.svc", "a.svc"),
        Assignment(sa, "services/billing.shop.svc", "billing.shop.svc"),
        Assignment(u, "namespaces/shop"),
        Assignment(u, "services/a.svc", "a.svc"),
        Assignment(u, "services/billing.shop.svc", "billing.shop.svc"),
    )


def test_binding_status_is_the_wire_form() -> None:
    binding = rb_api.RoleBinding.parse(
        {
            "metadata": {"name": "readers", "namespace": "shop", "generation": 2},
            "spec": {"roleRef": {"name": "reader"}, "members": [{"serviceAccount": {"name": "billing"}}]},
        }
    )
    status = assignments.binding_status(binding.status.conditions, evaluate((BILLING,)), NOW)
    assert status["observedGeneration"] == 2 and status["services"] == ["billing.shop.svc"]
    assert status["conditions"][0]["reason"] == "Bound" and status["conditions"][0]["status"] == "True"
    assert status["memberAssignments"] == [
        {"member": BILLING.key, "scope": "namespaces/shop"},
        {"member": BILLING.key, "scope": "services/billing.shop.svc", "service": "billing.shop.svc"},
    ]
    assert rb_api.RoleBindingStatus.model_validate(status).member_assignments[1].service == "billing.shop.svc"
    assert status["assignmentCount"] == 2


def test_binding_status_lists_a_bounded_number_of_assignments() -> None:
    binding = rb_api.RoleBinding.parse(
        {
            "metadata": {"name": "readers", "namespace": "shop"},
            "spec": {"roleRef": {"name": "reader"}, "members": [{"serviceAccount": {"name": "billing"}}]},
        }
    )
    result = evaluate((BILLING, ALICE1, ALICE2), READER, frozenset({"a.svc"}))  # 3 x (1 + 2)
    status = assignments.binding_status(binding.status.conditions, result, NOW, limit=4)
    assert len(status["memberAssignments"]) == 4 and status["assignmentCount"] == 9
    assert status["conditions"][0]["message"].endswith("memberAssignments lists the first 4 of 9.")


@pytest.mark.parametrize(
    ("text", "services"),
    [
        (None, set()),
        ("", set()),
        (" , ,", set()),
        ("billing.shop.svc", {"billing.shop.svc"}),
        (" a.svc ,b.example.com,, a.svc ", {"a.svc", "b.example.com"}),
        ("a.svc,Upper.svc,bad..name,-x.svc,ok", {"a.svc", "ok"}),
        ("a.svc\nb.svc", set()),  # one invalid name: the separator is a comma
        ("a.svc,\n b.svc", {"a.svc", "b.svc"}),
        ("x" * 254 + ",y", {"y"}),
    ],
)
def test_services_annotation(text: str | None, services: set[str]) -> None:
    assert assignments.parse_services_annotation(text) == services


def test_compute_summaries_and_grants() -> None:
    writer = RoleFacts(frozenset({"shop.orders.write"}), frozenset({"orders.shop.svc"}))
    state = grants.Inputs(
        roles={("shop", "reader"): READER, ("shop", "writer"): writer, ("ops", "reader"): READER},
        bindings={
            ("shop", "readers"): BindingFacts("reader", (BILLING, ALICE1)),
            ("shop", "writers"): BindingFacts("writer", (BILLING,)),
            ("ops", "readers"): BindingFacts("reader", (BILLING, ALICE2)),
            ("ops", "dangling"): BindingFacts("missing", (AUDIT,)),
        },
        namespace_services={"ops": frozenset({"ops.svc"})},
        accounts=ACCOUNTS,
    )
    result = grants.compute(state)
    assert result.principals[BILLING.key] == grants.Summary(
        services=("billing.shop.svc", "ops.svc", "orders.shop.svc"),
        bindings=(("ops", "readers"), ("shop", "readers"), ("shop", "writers")),
        namespaces=("ops", "shop"),
    )
    assert AUDIT.key not in result.principals  # only a binding whose role is missing
    assert result.grants["shop"][BILLING.key] == grants.Grant(
        ("shop.*.list", "shop.orders.read", "shop.orders.write"), ("billing.shop.svc", "orders.shop.svc")
    )
    assert set(result.grants["ops"]) == {BILLING.key, ALICE2.key}
    assert result.tokens[ALICE1.key] == {"shop": ("shop.*.list", "shop.orders.read")}
    assert grants.Engine(state).result == result


def test_engine_reports_nothing_for_a_change_that_changes_nothing() -> None:
    engine = grants.Engine()
    assert not engine.set_binding(("shop", "b"), None)
    assert not engine.set_namespace_services("shop", [])
    assert engine.set_binding(("shop", "b"), BindingFacts("reader", (ALICE1,)))  # RoleNotFound status
    assert not engine.set_role(("shop", "other"), READER)  # no binding names it
    delta = engine.set_role(("shop", "reader"), READER)
    assert delta == grants.Delta(
        frozenset({("shop", "b")}), frozenset({ALICE1.key}), frozenset({"shop"}), frozenset({ALICE1.key})
    )
    assert not engine.set_role(("shop", "reader"), READER)
    with pytest.raises(TypeError):
        engine.set_namespace_services("shop", "a.svc,b.svc")


def test_engine_reports_services_only_changes_without_the_token() -> None:
    engine = grants.Engine()
    engine.set_role(("shop", "reader"), READER)
    engine.set_binding(("shop", "b"), BindingFacts("reader", (ALICE1,)))
    delta = engine.set_namespace_services("shop", ["extra.svc"])
    assert delta.grants == {"shop"} and delta.principals == {ALICE1.key} and not delta.tokens


# --- property: the Engine, change by change, equals compute() of the final state -------------------------

NAMESPACES = ("a", "b", "c")
ACCOUNT_KEYS = [(ns, name) for ns in NAMESPACES for name in ("s1", "s2")]
PRINCIPALS = [Principal.service_account(*key) for key in ACCOUNT_KEYS] + [
    Principal.user(issuer, subject) for issuer in (IDP1, IDP2) for subject in ("alice", "bob")
]
SERVICES = st.frozensets(st.sampled_from(["s.svc", "t.svc", "u.example.com"]), max_size=2)
ROLE_NAMES = st.sampled_from(("r1", "r2"))
ROLES = st.builds(RoleFacts, st.frozensets(st.sampled_from(["x.y.read", "x.y.write", "x.*.list", "z.q.get"])), SERVICES)
BINDINGS = st.builds(
    BindingFacts, ROLE_NAMES, st.lists(st.sampled_from(PRINCIPALS), max_size=4).map(tuple), st.integers(1, 3)
)
CHANGES = st.one_of(
    st.tuples(st.just("role"), st.tuples(st.sampled_from(NAMESPACES), ROLE_NAMES), st.none() | ROLES),
    st.tuples(
        st.just("binding"),
        st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(("b1", "b2", "b3"))),
        st.none() | BINDINGS,
    ),
    st.tuples(st.just("services"), st.sampled_from(NAMESPACES), SERVICES),
    st.tuples(st.just("account"), st.sampled_from(ACCOUNT_KEYS), st.sampled_from(("absent", "enabled", "disabled"))),
)


def apply(engine: grants.Engine, change: tuple[str, Any, Any]) -> grants.Delta:
    kind, key, value = change
    if kind == "role":
        return engine.set_role(key, value)
    if kind == "binding":
        return engine.set_binding(key, value)
    if kind == "services":
        return engine.set_namespace_services(key, value)
    return engine.set_account(key, value != "absent", value == "enabled")


def changed(before: Mapping[Any, Any], after: Mapping[Any, Any]) -> set[Any]:
    return {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}


@settings(max_examples=300, deadline=None)
@given(st.lists(CHANGES, max_size=12), st.lists(CHANGES, min_size=1, max_size=25))
def test_engine_equals_compute_and_deltas_are_exact(setup: list[Any], changes: list[Any]) -> None:
    builder = grants.Engine()
    for change in setup:
        apply(builder, change)
    engine = grants.Engine(builder.state())  # from a whole state, as at operator start
    assert engine.result == grants.compute(engine.state()) == builder.result
    for change in changes:
        before, versions = engine.snapshot(), {ns: engine.grants_version(ns) for ns in NAMESPACES}
        delta = apply(engine, change)
        after = engine.snapshot()
        assert {ns for ns in NAMESPACES if engine.grants_version(ns) != versions[ns]} == delta.grants
        assert after == grants.compute(engine.state())
        assert delta.bindings == changed(before.bindings, after.bindings)
        assert delta.principals == changed(before.principals, after.principals)
        assert delta.grants == changed(before.grants, after.grants)
        assert delta.tokens == changed(before.tokens, after.tokens)


@pytest.mark.parametrize(
    ("principal", "account"),
    [
        ("urn:tessera:serviceaccount:shop:billing", ("shop", "billing")),
        ("user:https://login.example.com#alice@example.com", None),
        ("urn:tessera:serviceaccount:shop", None),
        ("urn:tessera:serviceaccount:shop:a:b", None),
    ],
)
def test_only_service_account_principals_name_an_account(principal: str, account: tuple[str, str] | None) -> None:
    assert sa_api.parse_subject(principal) == account


def test_summary_status_is_empty_lists_once_bound_nowhere() -> None:
    assert grants.summary_status(None) == {"services": [], "boundIn": []}
    summary = grants.Summary(services=("a.svc",), bindings=(("t", "rb"),), namespaces=("t",))
    assert grants.summary_status(summary) == {"services": ["a.svc"], "boundIn": ["t/rb"]}
