"""What the RoleBinding informer keeps of a binding: compact, and the same facts as the body it came from."""

from __future__ import annotations

import datetime
from typing import Any

from tessera.core import assignments, status
from tessera.operator import rolebindings

READY = {
    "type": "Ready",
    "status": "False",
    "reason": "RoleNotFound",
    "message": "Role viewer does not exist in namespace apps.",
    "lastTransitionTime": "2026-11-30T15:00:00Z",
    "observedGeneration": 2,
}
OTHER = {"type": "Synced", "status": "True", "reason": "Done", "lastTransitionTime": "2026-11-29T10:00:00Z"}


def body(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "iam.tessera.dev/v1alpha1",
        "kind": "RoleBinding",
        "metadata": {"name": "b", "namespace": "apps", "uid": "u-1", "resourceVersion": "42", "generation": 2},
        "spec": {
            "roleRef": {"name": "viewer"},
            "members": [{"serviceAccount": {"name": "web"}}, {"user": {"issuer": "https://idp", "subject": "ann"}}],
        },
        "status": {"conditions": conditions, "memberAssignments": [{"member": "x", "scope": "y"}] * 3},
    }


def test_the_entry_gives_back_the_stored_conditions_and_ready_condition() -> None:
    stored = body([READY, OTHER])
    entry = rolebindings.binding_entry(stored)
    assert entry is not None
    assert entry.ready == status.ready_condition(stored["status"])
    assert [c.type for c in entry.conditions] == ["Ready", "Synced"]
    ready = entry.conditions[0]
    assert (ready.status, ready.reason, ready.observed_generation) == ("False", "RoleNotFound", 2)
    assert ready.last_transition_time == datetime.datetime(2026, 11, 30, 15, tzinfo=datetime.UTC)
    assert entry.status_digest == status.digest(stored["status"])
    assert (entry.uid, entry.version) == ("u-1", "42")


def test_an_entry_without_conditions_has_no_ready_condition() -> None:
    entry = rolebindings.binding_entry(body([]))
    assert entry is not None and entry.conditions == () and entry.ready == {}


def test_bindings_listing_the_same_principal_share_one_instance() -> None:
    first, second = (rolebindings.binding_entry(body([])) for _ in range(2))
    assert first is not None and second is not None
    assert all(a is b for a, b in zip(first.facts.members, second.facts.members, strict=True))
    assert assignments.Principal.user("https://idp", "ann") is assignments.Principal.user("https://idp", "ann")
