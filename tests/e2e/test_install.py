"""What a user does first, in real Pods: ``helm install`` runs the operator from the project's image
(Ready through its probes, under the chart's restricted security context), then ``kubectl apply -f
examples/`` makes every example Ready and the ledger's Pods (app + sidecar) Ready."""

from __future__ import annotations

import json
from typing import Any

from tests import waiting
from tests.e2e import kit

BILLING = "urn:tessera:serviceaccount:shop:billing"


def pods(release: kit.Release, namespace: str, selector: str) -> list[dict[str, Any]]:
    listed = release.kube.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(listed)["items"]
    return items


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def test_the_operator_pod_runs_the_image_under_the_restricted_context(release: kit.Release) -> None:
    [pod] = pods(release, kit.HOME, "app.kubernetes.io/component=operator")
    assert ready(pod)
    [container] = pod["spec"]["containers"]
    assert container["image"] == release.images.tessera
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"  # Ready came through the probe
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"] and context["seccompProfile"]["type"] == "RuntimeDefault"
    [status] = pod["status"]["containerStatuses"]
    assert status["restartCount"] == 0
    # The kernel holds it to that context: not root, and the root filesystem refuses writes.
    name = pod["metadata"]["name"]
    assert release.kube.kubectl("exec", name, "-n", kit.HOME, "--", "id", "-u").stdout.strip() == "10001"
    wrote = release.kube.kubectl("exec", name, "-n", kit.HOME, "--", "touch", "/opt/x", check=False)
    assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr


def test_every_example_is_ready_and_the_ledger_pods_run_app_and_sidecar(examples: kit.Release) -> None:
    assert kit.not_ready(examples.kube) == []
    ledgers = pods(examples, "shop", "app=ledger")
    assert len(ledgers) == 2 and all(ready(p) for p in ledgers)
    for pod in ledgers:
        images = {c["name"]: c["image"] for c in pod["spec"]["containers"]}
        assert images == {"app": examples.images.apps, "tessera-sidecar": examples.images.tessera}
        assert all(s["ready"] and s["restartCount"] == 0 for s in pod["status"]["containerStatuses"])


def test_the_billing_example_calls_the_ledger_through_egress(examples: kit.Release) -> None:
    """examples/50: the billing app calls its sidecar's egress port without a token and prints each
    answer; once billing's grant has reached the ledger's sidecars, it gets 200 with billing's identity
    passed on to the ledger app."""

    def answered() -> list[str]:
        logs = examples.kube.kubectl("logs", "deployment/billing", "-n", "shop").stdout
        return [line for line in logs.splitlines() if line.startswith("200 ")]

    [first, *_] = waiting.until(answered, timeout=180, interval=2, what="a 200 in billing's log")
    assert json.loads(first.removeprefix("200 "))["identity"]["X-Tessera-Subject"] == BILLING
