"""Role and RoleBinding models: permission and name patterns, members, and what their generated CRDs carry."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest

from tessera.api import kinds
from tessera.api import role as role_api
from tessera.api import rolebinding as rb_api
from tessera.core import assignments

CRDS = Path(__file__).resolve().parents[2] / "crds"
ROLE_KIND = next(k for k in kinds.ALL if k.info.kind == "Role")
BINDING_KIND = next(k for k in kinds.ALL if k.info.kind == "RoleBinding")
ISSUER = "https://idp.example.com"


def role(**spec: Any) -> role_api.Role:
    return role_api.Role.parse({"metadata": {"name": "r", "namespace": "shop"}, "spec": spec})


def binding(**spec: Any) -> rb_api.RoleBinding:
    body = {"metadata": {"name": "b", "namespace": "shop"}, "spec": {"roleRef": {"name": "r"}, **spec}}
    return rb_api.RoleBinding.parse(body)


@pytest.mark.parametrize(
    ("permission", "valid"),
    [
        ("net.example.ping.read", True),  # dotted namespace net.example
        ("com.ecadlabs.users.create", True),
        ("a.b.c", True),
        ("shop.orders.read", True),
        ("svc_1.order-items.list", True),
        ("0.1.2", True),
        ("*.*.*", True),
        ("net.example.*.read", True),
        ("net.example.ping.*", True),
        ("a.b", False),  # two segments: no verb
        ("a", False),
        ("", False),
        ("a..b.c", False),  # empty segment
        ("a.b.c.", False),  # trailing dot
        (".a.b.c", False),
        ("Net.example.ping.read", False),  # upper case
        ("a.b*.c", False),  # a wildcard is a whole segment
        ("a.**.c", False),
        ("a.-b.c", False),
        ("a.b_.c", False),
        ("a.b c.d", False),
        ("a.b.c\n", False),
        ("a.b.é", False),
        ("x." * 124 + "verbs", True),  # 253 characters
        ("x." * 124 + "verbss", False),  # 254
    ],
)
def test_permission_pattern(permission: str, valid: bool) -> None:
    if valid:
        assert role(permissions=[permission]).spec.permissions == [permission]
    else:
        with pytest.raises(pydantic.ValidationError):
            role(permissions=[permission])


@pytest.mark.parametrize(
    ("spec", "valid"),
    [
        ({"permissions": ["a.b.c"], "services": ["billing.shop.svc", "devices.example.com"]}, True),
        ({"permissions": ["a.b.c"], "description": "reads orders"}, True),
        ({"permissions": []}, False),
        ({}, False),
        ({"permissions": [f"a.b.v{i}" for i in range(257)]}, False),
        ({"permissions": ["a.b.c"], "services": ["Billing.svc"]}, False),
        ({"permissions": ["a.b.c"], "services": ["billing..svc"]}, False),
        ({"permissions": ["a.b.c"], "services": [f"s{i}.svc" for i in range(65)]}, False),
        ({"permissions": ["a.b.c"], "description": "x" * 1025}, False),
    ],
    ids=[
        "services",
        "description",
        "no-permissions",
        "empty",
        "too-many",
        "service-case",
        "service-dots",
        "svc-many",
        "long",
    ],
)
def test_role_spec(spec: dict[str, Any], valid: bool) -> None:
    if valid:
        role(**spec)
    else:
        with pytest.raises(pydantic.ValidationError):
            role(**spec)


@pytest.mark.parametrize(
    ("member", "valid"),
    [
        ({"serviceAccount": {"name": "billing"}}, True),
        ({"serviceAccount": {"name": "billing", "namespace": "ops"}}, True),
        ({"user": {"issuer": ISSUER, "subject": "alice@example.com"}}, True),
        ({"user": {"issuer": "https://idp.example.com:8443/realms/main", "subject": "a"}}, True),
        ({}, False),
        ({"serviceAccount": {"name": "billing"}, "user": {"issuer": ISSUER, "subject": "a"}}, False),
        ({"user": {"issuer": "http://idp.example.com", "subject": "a"}}, False),
        ({"user": {"issuer": "https://idp.example.com/#frag", "subject": "a"}}, False),
        ({"user": {"issuer": "https://idp.example.com?x=1", "subject": "a"}}, False),
        ({"user": {"issuer": "https://", "subject": "a"}}, False),
        ({"user": {"issuer": ISSUER, "subject": ""}}, False),
        ({"user": {"issuer": ISSUER + "/" + "x" * 512, "subject": "a"}}, False),
        ({"serviceAccount": {"name": "Billing"}}, False),
        ({"serviceAccount": {"name": "billing", "namespace": "a.b"}}, False),
    ],
)
def test_member(member: dict[str, Any], valid: bool) -> None:
    if valid:
        binding(members=[member])
    else:
        with pytest.raises(pydantic.ValidationError):
            binding(members=[member])


def test_binding_needs_one_to_a_thousand_members() -> None:
    member = {"user": {"issuer": ISSUER, "subject": "a"}}
    assert len(binding(members=[member] * 1000).spec.members) == 1000
    for members in ([], [member] * 1001):
        with pytest.raises(pydantic.ValidationError):
            binding(members=members)


def spec_schema(kind: kinds.Kind) -> dict[str, Any]:
    schema: dict[str, Any] = kind.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def rules(node: dict[str, Any]) -> set[str]:
    return {r["rule"] for r in node.get("x-kubernetes-validations", [])}


def test_role_crd_checks_permissions_at_apply() -> None:
    props = spec_schema(ROLE_KIND)["properties"]
    assert props["permissions"]["items"]["pattern"] == role_api.PERMISSION_PATTERN
    assert props["permissions"]["x-kubernetes-list-type"] == "set"
    assert props["services"]["x-kubernetes-list-type"] == "set"
    assert (props["permissions"]["minItems"], props["permissions"]["maxItems"]) == (1, 256)
    crd = ROLE_KIND.crd()
    assert crd["spec"]["names"]["shortNames"] == ["trole", "tessera-role"]
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert list(columns) == ["Ready", "Reason", "Description", "Age"]
    assert columns["Description"]["priority"] == 1


def test_rolebinding_crd_carries_the_cel_rules() -> None:
    props = spec_schema(BINDING_KIND)["properties"]
    assert rules(props["roleRef"]) == {"self == oldSelf"}
    assert rules(props["members"]["items"]) == {"has(self.serviceAccount) != has(self.user)"}
    assert props["members"]["items"]["properties"]["user"]["properties"]["issuer"]["pattern"] == rb_api.HTTPS_URL
    crd = BINDING_KIND.crd()
    assert crd["spec"]["names"]["shortNames"] == ["trb", "tessera-rb"]
    columns = [c["jsonPath"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert ".spec.roleRef.name" in columns


@pytest.mark.parametrize(
    ("filename", "needle"),
    [
        ("iam.tessera.dev_roles.yaml", f"pattern: {role_api.PERMISSION_PATTERN}"),
        ("iam.tessera.dev_roles.yaml", "x-kubernetes-list-type: set"),
        ("iam.tessera.dev_rolebindings.yaml", "rule: self == oldSelf"),
        ("iam.tessera.dev_rolebindings.yaml", "roleRef is immutable; delete and recreate the binding"),
        ("iam.tessera.dev_rolebindings.yaml", "rule: has(self.serviceAccount) != has(self.user)"),
        ("iam.tessera.dev_rolebindings.yaml", "set exactly one of serviceAccount or user"),
        ("iam.tessera.dev_rolebindings.yaml", f"pattern: {rb_api.HTTPS_URL}"),
    ],
)
def test_generated_crd_files_carry_the_rules(filename: str, needle: str) -> None:
    assert needle in (CRDS / filename).read_text()


def test_an_accepted_role_is_ready_and_counts_its_permissions_keeping_the_transition_time() -> None:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    accepted = role(permissions=["shop.orders.read", "shop.orders.write"])
    first = assignments.role_status(accepted, now)
    [ready] = first["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Accepted")
    assert ready["message"] == "2 permissions"
    again = role_api.Role.parse({**accepted.wire(), "status": first})
    later = assignments.role_status(again, now + datetime.timedelta(hours=1))
    assert later["conditions"][0]["lastTransitionTime"] == ready["lastTransitionTime"]
