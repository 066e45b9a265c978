"""The end-to-end suite's fixtures: a real node (kubelet, containerd, kube-proxy, CoreDNS) built and
started here, the project's image built from its Dockerfile and loaded into it, the chart installed by
helm, the examples applied as the README says, and workloads that call the ledger from their Pods.

With ``TESSERA_USE_EXISTING_CLUSTER=1`` the same tests run against the current kubeconfig context,
with the images named by ``TESSERA_E2E_IMAGE`` (the project's) and ``TESSERA_E2E_APP_IMAGE``
(``tests/e2e/apps``), already loaded into or pullable by that cluster (docs/development.md).

Timings and measurements go to ``$TESSERA_E2E_REPORT`` (default ``e2e-results.json``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tessera.envtest import hostpkgs, images, node
from tests.chart_kit import Helm
from tests.e2e import kit
from tests.harness import ROOT, Cluster, client_for
from tests.integration.test_chart import snapshot

EXISTING = os.environ.get("TESSERA_USE_EXISTING_CLUSTER") == "1"
# The story the suite tells, in order: modules that need a node of their own first, then install,
# use, revoke, rotate, operate, uninstall.
ORDER = (
    "test_node",
    "test_install",
    "test_issuer",
    "test_workloads",
    "test_revocation",
    "test_rotation",
    "test_operations",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the modules in story order; on someone else's cluster, leave out what needs a node of ours."""

    def rank(item: pytest.Item) -> int:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        return ORDER.index(module) if module in ORDER else len(ORDER)

    items.sort(key=rank)  # stable: tests keep their order within a module
    if EXISTING:
        own = [item for item in items if item.get_closest_marker("local_node")]
        config.hook.pytest_deselected(items=own)
        items[:] = [item for item in items if item not in own]


NODE_LOG_TAIL = 40  # lines of each node agent's log shown with a failed test
AGENT_LOGS = ("coredns", "kube-proxy", "kubelet")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test shows the end of the node agents' logs (CoreDNS, kube-proxy, kubelet): the node's
    folder is gone once the session ends, and a Pod's failed lookup or connection is explained there."""
    result = yield
    ours = None if EXISTING or not result.failed else node.running()
    if ours is not None:
        for name in AGENT_LOGS:
            log = ours.directory / "logs" / f"{name}.log"
            if log.is_file():
                tail = log.read_text(errors="replace").splitlines()[-NODE_LOG_TAIL:]
                result.sections.append((f"node {name} log (last {NODE_LOG_TAIL} lines)", "\n".join(tail)))
    return result


@pytest.fixture(scope="session", autouse=True)
def host_packages() -> None:
    """The Debian packages a node needs (the tests read the machine with iptables-save before any
    node starts), installed when missing so that `pytest tests/e2e` works on a bare machine too."""
    if not EXISTING:
        hostpkgs.ensure()


@pytest.fixture(scope="session")
def report() -> Iterator[dict[str, Any]]:
    """Figures the suite measured; written out at the end."""
    figures: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    yield figures
    path = Path(os.environ.get("TESSERA_E2E_REPORT", ROOT / "e2e-results.json"))
    path.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(f"\ne2e figures written to {path}")


@pytest.fixture(scope="session")
def e2e_images(report: dict[str, Any]) -> kit.Images:
    """The project's image and the test apps' image (built here, by content; or named by the user)."""
    if EXISTING:
        return kit.Images(tessera=os.environ["TESSERA_E2E_IMAGE"], apps=os.environ["TESSERA_E2E_APP_IMAGE"])
    timings = report.setdefault("seconds", {})
    started = time.monotonic()
    tessera, apps = images.project(ROOT)
    timings["images tessera and apps (build or cache)"] = round(time.monotonic() - started, 1)
    return kit.Images(tessera=tessera.ref, apps=apps.ref, built=(tessera, apps))


@pytest.fixture(scope="session")
def our_node(e2e_images: kit.Images, report: dict[str, Any]) -> Iterator[node.NodeInfo | None]:
    """A node started for this session (stopped, and the machine restored, at the end); None on an
    existing cluster."""
    if EXISTING:
        yield None
        return
    timings = report.setdefault("seconds", {})
    started = time.monotonic()
    info = node.start()
    try:
        timings["node start"] = round(time.monotonic() - started, 1)
        report["node start timings"] = info.timings
        report["node memory idle (MiB)"] = kit.node_memory(info)
        started = time.monotonic()
        node.load(info, e2e_images.built)
        timings["image import into containerd"] = round(time.monotonic() - started, 1)
        yield info
    finally:
        node.stop()


@pytest.fixture(scope="session")
def kube(our_node: node.NodeInfo | None) -> Cluster:
    """The cluster the suite runs in: our node's, or the current kubeconfig context's."""
    api = client_for(our_node.kubeconfig if our_node else None)
    core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
    if our_node is None:
        return Cluster(None, "kubectl", core, custom, api)
    return Cluster(our_node.kubeconfig, str(our_node.kubectl), core, custom, api)


@pytest.fixture(scope="session")
def helm(kube: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tmp_path_factory.mktemp("helm"), kube)


@pytest.fixture(scope="session")
def release(kube: Cluster, helm: Helm, e2e_images: kit.Images, report: dict[str, Any]) -> kit.Release:
    """``helm install`` with default values but the image, which is not in a registry here."""
    before = frozenset(snapshot(kube))
    started = time.monotonic()
    helm("install", kit.RELEASE, str(kit.CHART), "-n", kit.HOME, "--create-namespace", *e2e_images.chart_values())
    kit.wait_rollout(kube, kit.HOME, kit.RELEASE)
    report.setdefault("seconds", {})["helm install -> operator Ready"] = round(time.monotonic() - started, 1)
    return kit.Release(kube, helm, e2e_images, before)


@pytest.fixture(scope="session")
def examples(release: kit.Release, report: dict[str, Any]) -> kit.Release:
    """``kubectl apply -f examples/``, the ledger's images swapped for the ones built here; all Ready."""
    started = time.monotonic()
    kit.apply_examples(release)
    kit.wait_examples_ready(release.kube)
    report.setdefault("seconds", {})["examples applied -> all Ready"] = round(time.monotonic() - started, 1)
    return release


@pytest.fixture(scope="session")
def steady(examples: kit.Release) -> kit.Caller:
    """A workload calling the ledger with billing's mounted token, five times a second, for the whole
    session: the tests read the calls of their own time window from its log."""
    return kit.start_caller(examples, "steady", "billing")


SHORT_TTL = 300  # the shortest TTL the docs recommend for tokens read from a mounted Secret


@pytest.fixture(scope="session")
def short(examples: kit.Release) -> kit.Caller:
    """An account with 5-minute tokens and a workload re-reading its mounted token for every call."""
    account = kit.account("short", token={"ttlSeconds": SHORT_TTL, "audiences": ["ledger"]})
    kit.apply_json(examples.kube, account, kit.binding("short-writes-ledger", "ledger-writer", ["short"]))
    return kit.start_caller(examples, "short", "short", interval=1.0)


@pytest.fixture(scope="session")
def egress_callers(examples: kit.Release) -> tuple[kit.Caller, kit.Caller]:
    """Two apps that never read a token, calling the ledger through the sidecar's egress mode: one with
    a 5-minute account's mounted token Secret, one exchanging its Pod's Kubernetes token at the issuer
    (5-minute tokens, renewed at about 80 %)."""
    kube = examples.kube
    kube.kubectl("create", "serviceaccount", "egress-kube", "-n", "shop")
    token = {"ttlSeconds": SHORT_TTL, "audiences": ["ledger"]}
    accounts = [
        kit.account("egress-file", token=token),
        kit.account("egress-kube", kubernetesServiceAccount={"name": "egress-kube"}, token=token),
    ]
    kit.apply_json(
        kube, *accounts, kit.binding("egress-writes-ledger", "ledger-writer", ["egress-file", "egress-kube"])
    )
    mounted = kit.run_caller(examples, kit.egress_pod(examples, "egress-file", "egress-file"), "egress-file")
    exchanged = kit.run_caller(examples, kit.egress_pod(examples, "egress-kube", None, "egress-kube"), "egress-kube")
    return mounted, exchanged
