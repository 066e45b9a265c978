"""Operating the release in a real cluster: ``helm upgrade`` to two replicas (a rolling update) and the
loss of the active operator Pod, under steady calls: no valid token refused, nothing written twice;
then ``helm uninstall`` leaves exactly what the README says stays."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest
import urllib3
import yaml

from tests import waiting
from tests.e2e import kit
from tests.integration.test_chart import KEPT, delete_tessera_resources, object_id, snapshot


class SecretWrites:
    """Every write of a Tessera-managed Secret in shop while it runs: (time, name, token digest)."""

    SELECTOR = "app.kubernetes.io/managed-by=tessera"

    def __init__(self, kube: Any) -> None:
        self.writes: list[tuple[float, str, str]] = []
        self.kube = kube
        self.watch = kubernetes.watch.Watch()
        self.stopping = threading.Event()
        self.lost: str | None = None  # why the watch could not go on (then writes may be missing)
        listed = kube.core.list_namespaced_secret("shop", label_selector=self.SELECTOR)
        self.version: str = listed.metadata.resource_version
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        """Watch from the listing's version, resuming from the last event seen when a watch ends."""
        while not self.stopping.is_set():
            try:
                for event in self.watch.stream(
                    self.kube.core.list_namespaced_secret, "shop", label_selector=self.SELECTOR,
                    resource_version=self.version, timeout_seconds=60,
                ):  # fmt: skip
                    secret = event["object"]
                    self.version = secret.metadata.resource_version
                    token = base64.b64decode((secret.data or {}).get("token", "")) if secret.data else b""
                    self.writes.append((kit.now(), secret.metadata.name, hashlib.sha256(token).hexdigest()[:12]))
            except (urllib3.exceptions.HTTPError, kubernetes.client.ApiException) as exc:
                if not self.stopping.is_set():
                    self.lost = f"{type(exc).__name__}: {exc}"
                return

    def stop(self) -> None:
        self.stopping.set()
        self.watch.stop()

    def double_issues(self, within: float) -> list[tuple[str, float]]:
        """Secrets that got two different new tokens less than ``within`` seconds apart."""
        found: list[tuple[str, float]] = []
        last: dict[str, tuple[float, str]] = {}
        for at, name, digest in self.writes:
            previous = last.get(name)
            if previous and previous[1] != digest and at - previous[0] < within:
                found.append((name, round(at - previous[0], 2)))
            if not previous or previous[1] != digest:
                last[name] = (at, digest)
        return found


@pytest.fixture
def secret_writes(examples: kit.Release) -> Iterator[SecretWrites]:
    watcher = SecretWrites(examples.kube)
    yield watcher
    watcher.stop()


def peers(kube: Any) -> dict[str, Any]:
    found = json.loads(kube.kubectl("get", "clusterkopfpeering", kit.RELEASE, "-o", "json").stdout).get("status") or {}
    return dict(found)


def operator_pods(kube: Any) -> list[str]:
    listed = json.loads(kube.kubectl("get", "pods", "-n", kit.HOME, "-l", "app.kubernetes.io/component=operator",
                                     "-o", "json").stdout)["items"]  # fmt: skip
    return [p["metadata"]["name"] for p in listed if not p["metadata"].get("deletionTimestamp")]


def both(pods: list[str]) -> list[str] | None:
    return pods if len(pods) == 2 else None


def issuer_keys(kube: Any) -> str:
    return json.dumps((kube.secret(kit.HOME, "tessera-issuer-keys") or {}).get("data"), sort_keys=True)


class Churn:
    """New accounts, one a second, while operator Pods come and go: work that two replicas acting at
    once would both do (each would issue its own token)."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube
        self.names: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            name = f"churn-{len(self.names)}"
            kit.apply_json(self.kube, kit.account(name, token={"audiences": ["ledger"]}))
            self.names.append(name)

    def stop(self) -> list[str]:
        self.stopping.set()
        self.thread.join()
        return self.names


def test_two_replicas_and_losing_the_active_one_refuse_nothing_and_write_once(
    examples: kit.Release, steady: kit.Caller, short: kit.Caller, secret_writes: SecretWrites, report: dict[str, Any]
) -> None:
    kube, began, keys = examples.kube, kit.now(), issuer_keys(examples.kube)
    churn = Churn(kube)
    examples.upgrade("--set", "replicas=2")  # a rolling update: new Pods start while the old one acts
    kit.wait_rollout(kube, kit.HOME, kit.RELEASE)
    pods = waiting.until(lambda: both(operator_pods(kube)), what="two operator Pods")
    recorded = waiting.until(lambda: peers(kube) if set(pods) <= set(peers(kube)) else None, what="both peering")
    active = max(pods, key=lambda name: recorded[name]["priority"])
    lost = kit.now()
    kube.kubectl("delete", "pod", active, "-n", kit.HOME, "--wait=false")
    kit.apply_json(kube, kit.account("after-failover", token={"audiences": ["ledger"]}))
    waiting.until(lambda: kube.secret("shop", "after-failover-tessera-token"), timeout=120, what="served again")
    report["active operator Pod deleted -> a new account's token written (s)"] = round(kit.now() - lost, 1)
    kit.wait_rollout(kube, kit.HOME, kit.RELEASE)
    names = churn.stop()
    for name in names:
        waiting.until(functools.partial(token_secret, kube, name), timeout=120, what=f"{name}'s token")
    for caller in (steady, short):
        refused = kit.refused_since(report, "operator failover", caller, began)
        assert refused == [], f"{caller.name}: {refused[:3]}"
    issued = {name: len({d for _, n, d in secret_writes.writes if n == f"{name}-tessera-token"}) for name in names}
    assert names and set(issued.values()) == {1}, issued  # one token each, not one per replica
    assert secret_writes.lost is None
    assert secret_writes.double_issues(within=60) == []
    assert issuer_keys(kube) == keys  # no replica made or rotated keys of its own


# The chart's crds/ (Helm installs them, never deletes them: README) besides what KEPT lists, and the
# API server's own APIService for their group.
TESSERA_CRDS = {
    ("apiextensions.k8s.io", "CustomResourceDefinition", "", yaml.safe_load(path.read_text())["metadata"]["name"])
    for path in (kit.CHART / "crds").glob("iam.tessera.dev_*.yaml")
} | {("apiregistration.k8s.io", "APIService", "", "v1alpha1.iam.tessera.dev")}


def test_uninstall_leaves_what_the_readme_says(examples: kit.Release) -> None:
    kube = examples.kube
    made = {object_id(d) for d in examples.helm.manifest()}
    delete_tessera_resources(kube)  # first, while the operator runs (README)
    kube.kubectl("delete", "namespace", *kit.EXAMPLE_NAMESPACES, "--wait=true", "--timeout=120s")
    examples.helm("uninstall", kit.RELEASE, "-n", kit.HOME, "--wait")
    waiting.until(lambda: not pods_in(kube, kit.HOME), timeout=120, what="the operator Pods gone")
    after = snapshot(kube)
    assert not made & after, f"left by the chart: {sorted(made & after)}"
    stray = {o for o in after - examples.before if not every_namespace_has(o)}
    kept = KEPT | TESSERA_CRDS
    assert stray == kept, f"unexpected: {sorted(stray - kept)}; missing: {sorted(kept - stray)}"


def pods_in(kube: Any, namespace: str) -> list[str]:
    """Every Pod in the namespace, terminating ones included."""
    found: str = kube.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout
    return found.split()


def token_secret(kube: Any, account: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = kube.secret("shop", f"{account}-tessera-token")
    return found


def every_namespace_has(obj: tuple[str, str, str, str]) -> bool:
    """What Kubernetes itself keeps: each namespace's default ServiceAccount and root CA, the node's lease."""
    own = obj[:2] in {("", "ServiceAccount"), ("", "ConfigMap")} and obj[3] in {"default", "kube-root-ca.crt"}
    return own or obj[:3] == ("coordination.k8s.io", "Lease", "kube-node-lease")
