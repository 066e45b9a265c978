"""Roles and RoleBindings on the real API server: the two-tenant example (one account, different
roles in two namespaces), member assignments, the services summary on the account, grants in each
tenant's trust bundle, and bad input that heals or is refused at apply time.
"""

from __future__ import annotations

import json
from typing import Any

import jwt

from tests import waiting
from tests.harness import EXAMPLES, Cluster, Operator
from tests.resources import SA, apply, bundle, condition, opt_in, token_in, warnings

ROLE, BINDING = "roles", "rolebindings"
BILLING = "urn:tessera:serviceaccount:shop:billing"
ALICE = "user:https://login.example.com#alice@example.com"


def put(cluster: Cluster, namespace: str, kind: str, name: str, spec: dict[str, Any], check: bool = True) -> str:
    doc = {"apiVersion": "iam.tessera.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(doc), check=check)
    return result.stderr


def status_of(cluster: Cluster, namespace: str, plural: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = cluster.custom_object(namespace, plural, name).get("status") or {}
    return found


def grants_in(cluster: Cluster, namespace: str) -> dict[str, Any]:
    found: dict[str, Any] = (bundle(cluster, namespace) or {}).get("grants") or {}
    return found


def test_the_two_tenant_example(cluster: Cluster, operator: Operator) -> None:
    files = [str(EXAMPLES / f) for f in ("00-namespace.yaml", "10-serviceaccount.yaml", "30-two-tenants.yaml")]
    cluster.kubectl("apply", *(arg for f in files for arg in ("-f", f)))
    try:
        waiting.until(
            lambda: condition(cluster, "tenant-a", BINDING, "billing-reads-invoices").get("reason") == "Bound",
            what="Bound",
        )
        a = status_of(cluster, "tenant-a", BINDING, "billing-reads-invoices")
        assert a["services"] == ["billing.shop.svc", "orders.tenant-a.svc"]
        assigned = {(m["member"], m["scope"]) for m in a["memberAssignments"]}
        for member in (BILLING, ALICE):
            assert (member, "namespaces/tenant-a") in assigned
            assert (member, "services/billing.shop.svc") in assigned and (
                member,
                "services/orders.tenant-a.svc",
            ) in assigned
        waiting.until(
            lambda: condition(cluster, "tenant-a", ROLE, "invoice-reader").get("status") == "True", what="Role Ready"
        )

        summary = {
            "services": ["billing.shop.svc", "ledger.shop.svc", "orders.tenant-a.svc", "reports.tenant-b.svc"],
            "boundIn": ["tenant-a/billing-reads-invoices", "tenant-b/billing-runs-ledger"],
        }
        waiting.until(
            lambda: {k: status_of(cluster, "shop", SA, "billing").get(k) for k in summary} == summary,
            what="the services summary on the account",
        )
        waiting.until(
            lambda: BILLING in grants_in(cluster, "tenant-a") and BILLING in grants_in(cluster, "tenant-b"),
            what="grants",
        )
        tenant_a, tenant_b = grants_in(cluster, "tenant-a"), grants_in(cluster, "tenant-b")
        assert tenant_a[BILLING]["permissions"] == ["dev.tessera.invoices.read", "dev.tessera.payments.read"]
        assert tenant_b[BILLING]["permissions"] == ["dev.tessera.ledger.*"]  # a different role in the other tenant
        assert ALICE in tenant_a and ALICE not in tenant_b
    finally:
        cluster.kubectl("delete", "-f", str(EXAMPLES / "30-two-tenants.yaml"), "--ignore-not-found")
        cluster.kubectl("delete", "-f", str(EXAMPLES / "00-namespace.yaml"), "--ignore-not-found")


def test_bad_bindings_are_reported_heal_and_keep_summaries_correct(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    opt_in(cluster, namespace)
    apply(cluster, namespace, SA, "app", {})
    app = f"urn:tessera:serviceaccount:{namespace}:app"
    member = {"serviceAccount": {"name": "app"}}

    def reason(name: str) -> str:
        return str(condition(cluster, namespace, BINDING, name).get("reason"))

    put(cluster, namespace, "RoleBinding", "early", {"roleRef": {"name": "viewer"}, "members": [member]})
    waiting.until(lambda: reason("early") == "RoleNotFound", what="RoleNotFound")
    put(cluster, namespace, "Role", "viewer", {"permissions": ["dev.app.items.read"], "services": ["items.svc"]})
    waiting.until(lambda: reason("early") == "Bound", what="healed when the role appeared")
    waiting.until(lambda: status_of(cluster, namespace, SA, "app").get("services") == ["items.svc"], what="summary")
    waiting.until(lambda: app in grants_in(cluster, namespace), what="grant in the bundle")

    cluster.core.patch_namespace(namespace, {"metadata": {"annotations": {"iam.tessera.dev/services": "tenant.svc"}}})
    waiting.until(
        lambda: status_of(cluster, namespace, BINDING, "early").get("services") == ["items.svc", "tenant.svc"],
        what="namespace services",
    )

    cluster.kubectl("delete", "-n", namespace, "roles.iam.tessera.dev/viewer")
    waiting.until(lambda: reason("early") == "RoleNotFound", what="RoleNotFound after the role was deleted")
    waiting.until(lambda: not status_of(cluster, namespace, SA, "app").get("services"), what="summary emptied")
    waiting.until(lambda: app not in grants_in(cluster, namespace), what="grant withdrawn")

    put(cluster, namespace, "Role", "viewer", {"permissions": ["dev.app.items.read"]})
    put(
        cluster,
        namespace,
        "RoleBinding",
        "twice",
        {
            "roleRef": {"name": "viewer"},
            "members": [member, {"serviceAccount": {"name": "app", "namespace": namespace}}],
        },
    )
    waiting.until(lambda: reason("twice") == "DuplicateMembers", what="DuplicateMembers")
    put(
        cluster,
        namespace,
        "RoleBinding",
        "ghost",
        {"roleRef": {"name": "viewer"}, "members": [{"serviceAccount": {"name": "ghost"}}]},
    )
    waiting.until(lambda: reason("ghost") == "ServiceAccountNotFound", what="ServiceAccountNotFound")
    apply(cluster, namespace, SA, "ghost", {})
    waiting.until(lambda: reason("ghost") == "Bound", what="healed when the account appeared")
    assert operator.process.poll() is None


def test_invalid_roles_and_bindings_are_refused_at_apply(cluster: Cluster, crds: None, namespace: str) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("Role", {"permissions": ["Dev.App.Read"]}, "spec.permissions"),
        ("Role", {"permissions": ["a.b"]}, "spec.permissions"),
        ("Role", {"permissions": ["a.b.c", "a.b.c"]}, "Duplicate value"),
        ("RoleBinding", {"roleRef": {"name": "r"}, "members": [{}]}, "exactly one"),
        (
            "RoleBinding",
            {"roleRef": {"name": "r"}, "members": [{"user": {"issuer": "http://idp", "subject": "x"}}]},
            "issuer",
        ),
    ]
    for kind, spec, message in cases:
        stderr = put(cluster, namespace, kind, "bad", spec, check=False)
        assert message in stderr, (spec, stderr)
    put(
        cluster,
        namespace,
        "RoleBinding",
        "fixed",
        {"roleRef": {"name": "r"}, "members": [{"serviceAccount": {"name": "x"}}]},
    )
    stderr = put(
        cluster,
        namespace,
        "RoleBinding",
        "fixed",
        {"roleRef": {"name": "other"}, "members": [{"serviceAccount": {"name": "x"}}]},
        check=False,
    )
    assert "roleRef is immutable" in stderr, stderr


def token_grants(cluster: Cluster, namespace: str, account: str) -> Any:
    """The grants claim of the account's current token ("absent" when the token has none)."""
    token = token_in(cluster, namespace, f"{account}-tessera-token")
    return jwt.decode(token, options={"verify_signature": False}).get("grants", "absent") if token else None


def test_tokens_carry_grants_that_follow_changes_within_their_cap(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    opt_in(cluster, namespace)
    apply(cluster, namespace, SA, "app", {})
    app = f"urn:tessera:serviceaccount:{namespace}:app"
    waiting.until(lambda: token_grants(cluster, namespace, "app") == {}, what="a token with no grants")
    put(cluster, namespace, "Role", "viewer", {"permissions": ["dev.app.items.read"]})
    binding = {"roleRef": {"name": "viewer"}, "members": [{"serviceAccount": {"name": "app"}}]}
    put(cluster, namespace, "RoleBinding", "viewers", binding)
    waiting.until(
        lambda: token_grants(cluster, namespace, "app") == {namespace: ["dev.app.items.read"]},
        what="the grant in a reissued token",
    )
    grants_condition = [c for c in status_of(cluster, namespace, SA, "app")["conditions"] if c["type"] == "TokenGrants"]
    assert grants_condition[0]["status"] == "True", grants_condition

    # Past the cap (2,048 bytes of JSON by default) the claim is left out whole, the account says why
    # with one Warning, and the trust bundle still carries every permission.
    many = [f"dev.app.collection-number-{i:03d}.read" for i in range(80)]
    put(cluster, namespace, "Role", "viewer", {"permissions": many})
    waiting.until(lambda: token_grants(cluster, namespace, "app") == "absent", what="a token without the claim")

    def grants_condition_of() -> dict[str, Any] | None:
        found = [c for c in status_of(cluster, namespace, SA, "app")["conditions"] if c["type"] == "TokenGrants"]
        return found[0] if found and found[0]["status"] == "False" else None

    omitted = waiting.until(grants_condition_of, what="the status saying so")  # written just after the token
    assert omitted["reason"] == "GrantsTooLarge", omitted
    assert "trust bundle" in omitted["message"]
    waiting.until(lambda: grants_in(cluster, namespace).get(app, {}).get("permissions") == sorted(many), what="bundle")
    [warned] = waiting.until(lambda: warnings(cluster, namespace, "GrantsTooLarge", "app"), what="one Warning")
    assert (warned.get("count") or 1) == 1

    put(cluster, namespace, "Role", "viewer", {"permissions": ["dev.app.items.write"]})
    waiting.until(
        lambda: token_grants(cluster, namespace, "app") == {namespace: ["dev.app.items.write"]},
        what="the claim back once it fits",
    )


def test_a_disabled_member_is_unbound_noted_and_not_warned_about(
    cluster: Cluster, operator: Operator, namespace: str
) -> None:
    opt_in(cluster, namespace)
    apply(cluster, namespace, SA, "app", {})
    app = f"urn:tessera:serviceaccount:{namespace}:app"
    put(cluster, namespace, "Role", "viewer", {"permissions": ["dev.app.items.read"]})
    binding = {"roleRef": {"name": "viewer"}, "members": [{"serviceAccount": {"name": "app"}}]}
    put(cluster, namespace, "RoleBinding", "viewers", binding)
    waiting.until(lambda: app in grants_in(cluster, namespace), what="granted")

    apply(cluster, namespace, SA, "app", {"disabled": True})
    waiting.until(lambda: app not in grants_in(cluster, namespace), what="the grant withdrawn from the bundle")

    def noted() -> dict[str, Any] | None:
        found = condition(cluster, namespace, BINDING, "viewers")
        return found if "not bound while disabled" in found.get("message", "") else None

    ready = waiting.until(noted, what="the binding names the disabled account")
    assert ready["status"] == "True" and ready["reason"] == "Bound", ready
    assert f"{namespace}/app" in ready["message"]
    assert not status_of(cluster, namespace, SA, "app").get("services")
    assert not status_of(cluster, namespace, BINDING, "viewers").get("memberAssignments")
    assert not warnings(cluster, namespace, "ServiceAccountNotFound")

    apply(cluster, namespace, SA, "app", {})
    waiting.until(lambda: app in grants_in(cluster, namespace), what="granted again once enabled")
