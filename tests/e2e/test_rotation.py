"""Issuer key rotation with real propagation: a new key is published in every trust bundle a lead
longer than kubelet's refresh before it signs, so under steady calls no valid token is refused while
the workloads' tokens move to the new key. Among the workloads, two apps that never read a token
call through the sidecar's egress mode (a mounted token Secret; a token exchanged at the issuer):
their calls succeed across their tokens' refreshes and the rotation."""

from __future__ import annotations

import functools
import json
from typing import Any

from tests import waiting
from tests.e2e import kit

LEAD = 120  # seconds from publishing to signing: longer than kubelet's refresh of a mounted ConfigMap


def jwks_kids(kube: Any) -> set[str]:
    data = kube.configmap_data(kit.HOME, "tessera-issuer-jwks")
    return {k["kid"] for k in json.loads(next(iter(data.values())))["keys"]}


def signed_by_a_new_key(caller: kit.Caller, since: float, old: set[str]) -> list[dict[str, Any]]:
    """Calls since ``since`` that the ledger allowed with a token signed by a key not in ``old`` (as the
    ledger app saw the token: egress callers never see theirs)."""
    kid = lambda c: ((c.get("body") or {}).get("token") or {}).get("kid")  # noqa: E731
    return [c for c in caller.calls(since) if c["status"] == 200 and kid(c) not in (None, *old)]


def test_a_rotation_under_steady_calls_refuses_no_valid_token(
    examples: kit.Release,
    steady: kit.Caller,
    short: kit.Caller,
    egress_callers: tuple[kit.Caller, kit.Caller],
    report: dict[str, Any],
) -> None:
    kube, began = examples.kube, kit.now()
    before = jwks_kids(kube)
    examples.upgrade("--set-json", "keyRotationHours=0.05", "--set", f"keyPublishLeadSeconds={LEAD}")
    try:
        kit.wait_rollout(kube, kit.HOME, kit.RELEASE)
        new = waiting.until(lambda: jwks_kids(kube) - before, timeout=120, what="a new issuer key published")
        published = kit.now()
        moved = waiting.until(
            lambda: [c for c in short.calls(published) if c["kid"] in new and c["status"] == 200],
            timeout=LEAD + 2 * 300, interval=2, what="the short-lived account's calls signed by the new key",
        )  # fmt: skip
        report["rotation: key published -> first call with a token it signed (s)"] = round(moved[0]["t"] - published, 1)
        for caller in egress_callers:
            through = waiting.until(
                functools.partial(signed_by_a_new_key, caller, published, before), timeout=LEAD + 2 * 300,
                interval=2, what=f"{caller.name}'s calls through egress with a token a new key signed",
            )  # fmt: skip
            key = f"rotation: key published -> first call through egress ({caller.name}) with a token it signed (s)"
            report[key] = round(through[0]["t"] - published, 1)
    finally:
        examples.upgrade("--set", "keyRotationHours=720", "--set", "keyPublishLeadSeconds=300")
        kit.wait_rollout(kube, kit.HOME, kit.RELEASE)
    for caller in (steady, short, *egress_callers):
        refused = kit.refused_since(report, "rotation", caller, began)
        assert refused == [], f"{caller.name}: {refused[:3]}"
    for caller in egress_callers:  # the app never held a token, yet called with at least two in turn
        calls = caller.calls(caller.serving_since)
        assert [c for c in calls if c["status"] != 200] == [], f"{caller.name}: {calls[:3]}"
        digests = {c["body"]["token"]["digest"] for c in calls}
        assert len(digests) >= 2, f"{caller.name} called with one token only"
