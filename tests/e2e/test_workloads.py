"""Workloads as users run them, in real Pods: a client with billing's mounted token calls the ledger
through its Service (the sidecar allows, refuses, names the reason, passes the identity on), Pods
reach nothing outside the cluster, a short-lived token is renewed in the mounted file before it
expires, and kubelet's delays (Pod start, a ConfigMap change reaching the file) are measured."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tessera.envtest import node
from tests import waiting
from tests.e2e import kit
from tests.e2e.conftest import SHORT_TTL

BILLING = "urn:tessera:serviceaccount:shop:billing"


def test_billing_calls_the_ledger_through_its_service(steady: kit.Caller) -> None:
    allowed = steady.once("/entries/7")
    assert allowed["status"] == 200
    identity = allowed["body"]["identity"]  # what the app received from the sidecar
    assert identity["X-Tessera-Subject"] == BILLING
    assert identity["X-Tessera-Permissions"].split() == ["shop.ledger.read", "shop.ledger.write"]
    posted = steady.once("/entries", method="POST")
    assert posted["status"] == 200 and posted["body"]["method"] == "POST"
    anonymous = steady.once("/entries/7", token=False)
    assert (anonymous["status"], anonymous["reason"]) == (401, "missing_token")
    unmapped = steady.once("/admin", method="DELETE")  # no rule names this route: refused
    assert unmapped["status"] == 403 and unmapped["reason"]


def test_an_account_without_the_permission_is_refused_with_the_reason(
    examples: kit.Release, report: dict[str, Any]
) -> None:
    role = {
        "apiVersion": "iam.tessera.dev/v1alpha1",
        "kind": "Role",
        "metadata": {"name": "ledger-reader", "namespace": "shop"},
        "spec": {"permissions": ["shop.ledger.read"]},
    }
    granted = kit.now()
    kit.apply_json(
        examples.kube,
        role,
        kit.account("auditor", token={"audiences": ["ledger"]}),
        kit.binding("auditor-reads", "ledger-reader", ["auditor"]),
    )
    auditor = kit.start_caller(examples, "auditor", "auditor", interval=1.0)
    first = next(c for c in auditor.calls() if c["status"] == 200)
    report["new account and grant applied -> first 200 in a Pod (s)"] = round(first["t"] - granted, 1)
    report["new account and grant applied -> allowed by every ledger replica (s)"] = round(
        auditor.serving_since - granted, 1
    )
    assert auditor.once("/entries/7")["status"] == 200
    denied = auditor.once("/entries", method="POST")
    assert denied["status"] == 403 and "permission" in denied["reason"]


class Listener:
    """A TCP listener on every address of the machine, counting whoever reaches it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))  # noqa: S104 (on purpose: the test proves Pods cannot reach it)
        self.sock.listen()
        self.port: int = self.sock.getsockname()[1]
        self.accepted: list[tuple[str, int]] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.accepted.append(peer)
            conn.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener()
    yield found
    found.sock.close()


PROBE = """
import json, socket, sys
results = {}
for host, port in json.loads(sys.argv[1]):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); results[f"{host}:{port}"] = "connected"
    except OSError as exc:
        results[f"{host}:{port}"] = type(exc).__name__
    finally:
        s.close()
try:
    results["dns:example.com"] = socket.gethostbyname("example.com")
except OSError as exc:
    results["dns:example.com"] = type(exc).__name__
print(json.dumps(results))
"""


@pytest.mark.local_node
def test_pods_reach_the_cluster_and_nothing_outside_it(
    steady: kit.Caller, our_node: node.NodeInfo | None, listener: Listener
) -> None:
    if our_node is None:
        pytest.fail("containment is a property of this machine's node")
    machine = [a for a in kit.machine_addresses() if a != our_node.uplink.host_ip]
    outside = [(a, listener.port) for a in [*machine, our_node.uplink.host_ip]] + [("1.1.1.1", 443), ("192.0.2.1", 80)]
    inside = [("kubernetes.default.svc", 443), ("ledger.shop.svc", 80)]
    probe = ["python3", "-c", PROBE, json.dumps(inside + outside)]
    results = json.loads(steady.kube.kubectl("exec", steady.name, "-n", "shop", "--", *probe).stdout)
    assert all(results[f"{h}:{p}"] == "connected" for h, p in inside), results
    assert all(results[f"{h}:{p}"] != "connected" for h, p in outside), results
    assert results["dns:example.com"] == "gaierror"  # the cluster DNS forwards nowhere
    assert listener.accepted == []


def token_changes(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first call made with each distinct token."""
    seen: dict[str, dict[str, Any]] = {}
    for call in calls:
        seen.setdefault(call.get("digest", ""), call)
    return list(seen.values())


def test_a_short_lived_token_is_renewed_in_the_mounted_file_before_it_expires(
    short: kit.Caller, report: dict[str, Any]
) -> None:
    def renewed() -> list[dict[str, Any]]:
        changes = token_changes(short.calls(short.serving_since))
        return changes if len(changes) >= 2 else []

    old, new = waiting.until(renewed, timeout=SHORT_TTL + 60, interval=2, what="a renewed token in the file")[:2]
    calls = short.calls(short.serving_since)
    assert short.restarts() == 0
    assert new["t"] < old["exp"], "the new token reached the file only after the old one expired"
    assert [c for c in calls if c["status"] != 200] == []
    assert [c for c in calls if c["exp"] <= c["t"]] == [], "a call was made with an expired token"
    key = f"token renewal, ttl {SHORT_TTL} s: new token in the file, seconds before the old one expired"
    report[key] = round(old["exp"] - new["t"], 1)


def test_kubelet_delays_pod_start_and_configmap_to_file(examples: kit.Release, report: dict[str, Any]) -> None:
    kube, starts = examples.kube, []
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe", "namespace": "shop"}}
    kit.apply_json(kube, {**config, "data": {"v": "0"}})
    idle = ["python3", "-c", "import signal; signal.pause()"]
    for i in range(5):
        pod = kit.caller_pod(f"probe-{i}", None, examples.images.apps, idle)
        pod["spec"]["volumes"] = [{"name": "probe", "configMap": {"name": "probe"}}]
        pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "probe", "mountPath": "/probe"}]
        begun = time.monotonic()
        kit.apply_json(kube, pod)
        kube.kubectl("wait", "--for=condition=Ready", f"pod/probe-{i}", "-n", "shop", "--timeout=60s")
        starts.append(time.monotonic() - begun)
    delays = []
    for value in ("1", "2", "3"):
        begun = time.monotonic()
        kube.kubectl("patch", "configmap", "probe", "-n", "shop", "-p", json.dumps({"data": {"v": value}}))

        def arrived(v: str = value) -> bool:
            return kube.kubectl("exec", "probe-0", "-n", "shop", "--", "cat", "/probe/v").stdout == v

        waiting.until(arrived, timeout=180, interval=0.5, what=f"value {value} in the mounted file")
        delays.append(time.monotonic() - begun)
    kube.kubectl("delete", "pod", "-n", "shop", *(f"probe-{i}" for i in range(5)), "--wait=false")
    report["pod create -> Ready (s)"] = kit.summary(starts)
    report["ConfigMap change -> file in pod (s), kubelet defaults"] = kit.summary(delays)
