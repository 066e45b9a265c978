"""The issuer service in real Pods: its replicas become Ready through their probes, and a workload
with no Tessera Secret at all exchanges its Pod's projected Kubernetes token at the issuer (through
its Service, over TLS from the chart's CA, checked with TokenReview) and calls the ledger."""

from __future__ import annotations

import base64
import json
from typing import Any

from tests.e2e import kit

ISSUER_URL = f"https://tessera.{kit.HOME}.svc"
KUBE_TOKEN_DIR = "/var/run/secrets/tessera"
CA_DIR = "/etc/tessera-ca"


def test_the_issuer_replicas_are_ready(release: kit.Release) -> None:
    kit.wait_rollout(release.kube, kit.HOME, f"{kit.RELEASE}-issuer")
    listed = release.kube.kubectl(
        "get", "pods", "-n", kit.HOME, "-l", "app.kubernetes.io/component=issuer", "-o", "json"
    ).stdout
    pods = json.loads(listed)["items"]
    assert len(pods) == 2
    for pod in pods:
        assert all(s["ready"] and s["restartCount"] == 0 for s in pod["status"]["containerStatuses"])
        assert pod["spec"]["containers"][0]["image"] == release.images.tessera


def exchanging_pod(release: kit.Release, name: str, kubernetes_account: str) -> dict[str, Any]:
    """A Pod that mounts only a projected Kubernetes token (audience: the issuer) and the issuer's CA."""
    command = ["python3", "/app/client.py", "loop", f"{kit.LEDGER}/entries/1", "--interval", "0.5",
               "--token-file", f"{KUBE_TOKEN_DIR}/token", "--exchange", f"{ISSUER_URL}/token",
               "--ca", f"{CA_DIR}/ca.crt", "--audience", "ledger"]  # fmt: skip
    pod = kit.caller_pod(name, None, release.images.apps, command)
    spec = pod["spec"]
    spec["serviceAccountName"] = kubernetes_account
    token = {"serviceAccountToken": {"path": "token", "audience": ISSUER_URL, "expirationSeconds": 600}}
    spec["volumes"] = [
        {"name": "kube-token", "projected": {"sources": [token]}},
        {"name": "issuer-ca", "configMap": {"name": "tessera-issuer-ca"}},
    ]
    spec["containers"][0]["volumeMounts"] = [
        {"name": "kube-token", "mountPath": KUBE_TOKEN_DIR, "readOnly": True},
        {"name": "issuer-ca", "mountPath": CA_DIR, "readOnly": True},
    ]
    return pod


def test_a_pod_exchanges_its_kubernetes_token_and_calls_the_ledger(
    examples: kit.Release, report: dict[str, Any]
) -> None:
    kube = examples.kube
    tls = kube.secret(kit.HOME, f"{kit.RELEASE}-issuer-tls") or {}
    ca = base64.b64decode(tls["data"]["ca.crt"]).decode()  # the chart made it
    kube.kubectl("create", "configmap", "tessera-issuer-ca", "-n", "shop", f"--from-literal=ca.crt={ca}")
    kube.kubectl("create", "serviceaccount", "ledger-client", "-n", "shop")
    account = kit.account(
        "pod-caller", kubernetesServiceAccount={"name": "ledger-client"}, token={"audiences": ["ledger"]}
    )
    kit.apply_json(kube, account, kit.binding("pod-caller-writes-ledger", "ledger-writer", ["pod-caller"]))
    granted = kit.now()
    caller = kit.run_caller(examples, exchanging_pod(examples, "pod-caller", "ledger-client"), "pod-caller")
    report["Kubernetes token exchanged in a Pod: grant applied -> allowed by every ledger replica (s)"] = round(
        caller.serving_since - granted, 1
    )
    calls = caller.calls(caller.serving_since)
    assert calls and all(c["status"] == 200 for c in calls)
    subject = calls[-1]["body"]["identity"]["X-Tessera-Subject"]
    assert subject == "urn:tessera:serviceaccount:shop:pod-caller"
