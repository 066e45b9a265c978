"""Failures are retried until they land, and bad input is reported once: writes refused for a moment
(the chart's RBAC taken away, then restored), an API server that stops answering and comes back, and
objects with problems that no number of reconciles, retries or restarts warns about twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tessera.envtest import assets, controlplane
from tests import waiting
from tests.chart_kit import CHART, HOME, RELEASE, Helm, operator_identity, run_as_chart
from tests.harness import CRDS, Cluster, Operator, create_namespace, start_operator, stop_operator
from tests.resources import SA, SAK, apply, condition, reason_is, token_in, warnings

RB = "rolebindings"
MANAGED_ROLE = f"{RELEASE}-managed"


def metric(operator: Operator, name: str, **labels: str) -> float:
    """The sum of a metric's series whose labels include ``labels``."""
    total = 0.0
    for series, value in operator.metrics().items():
        base, _, rest = series.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def kinds_object(plural: str, kind: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {"apiVersion": "iam.tessera.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
    )


def binding(cluster: Cluster, namespace: str, name: str, role: str, accounts: list[str]) -> None:
    members = [{"serviceAccount": {"name": a}} for a in accounts]
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-",
        stdin=kinds_object(RB, "RoleBinding", name, {"roleRef": {"name": role}, "members": members}),
    )  # fmt: skip


def role(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=kinds_object("roles", "Role", name, {"permissions": ["a.b.c"]})
    )


# --- writes refused for a moment ------------------------------------------------------------------------


@pytest.fixture
def chart_operator(private_cluster: Cluster, tmp_path: Path) -> Iterator[tuple[Cluster, Operator]]:
    """The chart installed, and the operator run with exactly the chart's identity."""
    run_helm = Helm(tmp_path / "helm", private_cluster)
    run_helm("install", RELEASE, str(CHART), "-n", HOME, "--create-namespace", "--set", "refreshCheckSeconds=2")
    operator = run_as_chart(
        private_cluster, operator_identity(private_cluster, tmp_path), run_helm.manifest(), tmp_path / "operator.log"
    )
    yield private_cluster, operator
    stop_operator(operator)


def without(rules: list[dict[str, Any]], resource: str, verbs: set[str]) -> list[dict[str, Any]]:
    """The rules with ``verbs`` on ``resource`` (alone) taken away."""
    changed = []
    for rule in rules:
        if resource not in rule.get("resources", []):
            changed.append(rule)
            continue
        others = [r for r in rule["resources"] if r != resource]
        if others:
            changed.append({**rule, "resources": others})
        kept = [v for v in rule["verbs"] if v not in verbs]
        if kept:
            changed.append({**rule, "resources": [resource], "verbs": kept})
    return changed


def test_writes_refused_for_a_moment_are_retried_until_they_land(chart_operator: tuple[Cluster, Operator]) -> None:
    """The chart's RBAC loses token writes and RoleBinding status writes, then gets them back: the
    account says it has no token meanwhile, and both writes land after, without anything else changing."""
    cluster, operator = chart_operator
    apps = create_namespace(cluster, "apps")
    apply(cluster, apps, SA, "early", {})
    role(cluster, apps, "reader")
    waiting.until(lambda: reason_is(cluster, apps, SA, "early", "TokenIssued"), what="early Ready")
    original = json.loads(cluster.kubectl("get", "clusterrole", MANAGED_ROLE, "-o", "json").stdout)
    taken = without(without(original["rules"], "secrets", {"create", "patch"}), "rolebindings/status", {"patch"})
    cluster.kubectl("patch", "clusterrole", MANAGED_ROLE, "--type=merge", "-p", json.dumps({"rules": taken}))
    refused_before = metric(operator, "tessera_api_requests_total", outcome="403")

    apply(cluster, apps, SA, "late", {})
    binding(cluster, apps, "readers", "reader", ["early", "late"])
    waiting.until(lambda: reason_is(cluster, apps, SA, "late", "TokenNotWritten"), what="late says why")
    assert "403" in condition(cluster, apps, SA, "late")["message"]
    assert cluster.custom_object(apps, SA, "late")["status"].get("tokenExpiresAt") is None  # no token to claim
    waiting.until(
        lambda: metric(operator, "tessera_reconcile_duration_seconds_count", kind="RoleBinding", result="retry") >= 2,
        what="the binding's status write retried",
    )
    assert metric(operator, "tessera_api_requests_total", outcome="403") > refused_before
    assert not (cluster.custom_object(apps, RB, "readers").get("status") or {}).get("conditions")

    cluster.kubectl(
        "patch", "clusterrole", MANAGED_ROLE, "--type=merge", "-p", json.dumps({"rules": original["rules"]})
    )
    token = waiting.until(lambda: token_in(cluster, apps, "late-tessera-token"), timeout=60, what="late's token")
    assert jwt.decode(token, options={"verify_signature": False})["sub"].endswith(f":{apps}:late")
    waiting.until(lambda: reason_is(cluster, apps, SA, "late", "TokenIssued"), what="late Ready")
    waiting.until(lambda: reason_is(cluster, apps, RB, "readers", "Bound"), timeout=60, what="the binding's status")
    assert "Traceback" not in operator.logs()  # a refused write is one line, not a stack


# --- an API server that stops answering -----------------------------------------------------------------


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[tuple[controlplane.ControlPlane, Cluster]]:
    from tests.harness import client_for

    with controlplane.ControlPlane(assets.ensure(), directory=tmp_path / "cp", with_controller_manager=False) as cp:
        info = cp.start()
        api = client_for(info.kubeconfig)
        import kubernetes

        cluster = Cluster(
            info.kubeconfig, str(info.kubectl), kubernetes.client.CoreV1Api(api),
            kubernetes.client.CustomObjectsApi(api), api, garbage_collected=False,
        )  # fmt: skip
        cluster.kubectl("apply", "-f", str(CRDS))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
        yield cp, cluster


def test_a_token_due_during_an_outage_is_refreshed_once_the_api_server_answers(
    plane: tuple[controlplane.ControlPlane, Cluster], tmp_path: Path
) -> None:
    cp, cluster = plane
    home = create_namespace(cluster, "tessera-system")
    operator = start_operator(
        cluster, home, tmp_path / "operator.log", extra_env={"TESSERA_REFRESH_CHECK_SECONDS": "30"}
    )
    try:
        apps = create_namespace(cluster, "apps")
        apply(cluster, apps, SA, "short", {"token": {"ttlSeconds": 60}})  # refreshed at about half its life
        waiting.until(lambda: reason_is(cluster, apps, SA, "short", "TokenIssued"), what="a first token")
        first = token_in(cluster, apps, "short-tessera-token")
        refresh_at = cluster.custom_object(apps, SA, "short")["status"]["tokenRefreshAt"]
        assert first is not None
        cp.stop_apiserver()
        waiting.until(
            lambda: metric(operator, "tessera_queue_depth", state="parked") >= 1, timeout=90, what="the refresh parked"
        )  # it came due while nobody answered
        cp.start_apiserver()
        second = waiting.until(lambda: other_token(cluster, apps, "short", first), timeout=60, what="refreshed")
        assert (
            jwt.decode(second, options={"verify_signature": False})["iat"]
            > jwt.decode(first, options={"verify_signature": False})["iat"]
        )
        assert cluster.custom_object(apps, SA, "short")["status"]["tokenRefreshAt"] != refresh_at
        assert metric(operator, "tessera_reconcile_duration_seconds_count", result="unavailable") >= 1
        waiting.until(lambda: metric(operator, "tessera_queue_depth", state="parked") == 0, what="nothing parked")
        log = operator.logs()
        assert "Traceback" not in log[log.find("Failed to reconcile") :]  # connection errors: one line each
    finally:
        stop_operator(operator)


def other_token(cluster: Cluster, namespace: str, name: str, than: str) -> str | None:
    token = token_in(cluster, namespace, f"{name}-tessera-token")
    return token if token is not None and token != than else None


# --- bad input, reported once ---------------------------------------------------------------------------


def lines_about(operator: Operator, namespace: str, name: str) -> list[str]:
    return [line for line in operator.logs().splitlines() if f"[{namespace}/{name}]" in line]


def test_each_problem_is_warned_about_once_per_change_across_reconciles_and_restarts(
    private_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = private_cluster
    home = create_namespace(cluster, "tessera-system")
    apps = create_namespace(cluster, "apps")
    started = [start_operator(cluster, home, tmp_path / "first.log")]
    try:
        apply(cluster, apps, SA, "app", {})
        binding(cluster, apps, "no-role", "missing", ["app"])
        binding(cluster, apps, "two-problems", "reader", ["app", "app", "ghost"])
        role(cluster, apps, "reader")
        foreign = {"metadata": {"name": "taken-tessera-token"}, "stringData": {"token": "not Tessera's"}}
        cluster.core.create_namespaced_secret(apps, foreign)  # type: ignore[arg-type]
        apply(cluster, apps, SA, "taken", {})
        apply(cluster, apps, SAK, "orphan", {"serviceAccountName": "nobody", "generate": {}})
        expected = {
            ("no-role", "RoleNotFound"),
            ("two-problems", "DuplicateMembers"),
            ("two-problems", "ServiceAccountNotFound"),
            ("taken", "SecretNameTaken"),
            ("orphan", "ServiceAccountNotFound"),
        }

        def counts() -> dict[tuple[str, str], int]:
            found: dict[tuple[str, str], int] = {}
            for name, reason in expected:
                found[(name, reason)] = len(warnings(cluster, apps, reason, name))
            return found

        waiting.until(lambda: all(counts().values()), what="a Warning for each problem")
        # Many looks at each object: touches that change nothing, the refresh schedule, a restart.
        for kind, name in ((RB, "no-role"), (RB, "two-problems"), (SA, "taken"), (SAK, "orphan")):
            cluster.kubectl("annotate", "-n", apps, f"{kind}.iam.tessera.dev/{name}", "touched=1", "--overwrite")
        stop_operator(started.pop())
        started.append(start_operator(cluster, home, tmp_path / "second.log"))
        waiting.until(
            lambda: metric(started[0], "tessera_reconcile_duration_seconds_count", kind="RoleBinding") >= 2,
            what="the restarted operator looking at the bindings",
        )
        apply(cluster, apps, SA, "app", {"description": "a change elsewhere"})
        waiting.until(lambda: condition(cluster, apps, SA, "app").get("observedGeneration") == 2, what="seen")
        # A status that changes while its problems stay (the namespace names a service now) says nothing new.
        services = {"metadata": {"annotations": {"iam.tessera.dev/services": "ledger.apps.svc"}}}
        cluster.core.patch_namespace(apps, services)
        waiting.until(
            lambda: (
                "ledger.apps.svc"
                in (cluster.custom_object(apps, RB, "two-problems").get("status") or {}).get("services", [])
            ),
            what="the binding's status rewritten",
        )
        assert counts() == dict.fromkeys(expected, 1)
        assert len(lines_about(started[0], apps, "taken")) == 0  # nothing new to say about it after the restart

        binding(cluster, apps, "no-role", "missing", ["app", "other"])  # a change of the object: warned again
        waiting.until(lambda: counts()[("no-role", "RoleNotFound")] == 2, what="a Warning for the new generation")
    finally:
        for operator in started:
            stop_operator(operator)
    log = (tmp_path / "first.log").read_text()
    assert len(re.findall(rf"\[{apps}/taken\]", log)) == 1, "a line per state change, not per look"
