"""Fixtures: a real kube-apiserver + etcd (or an existing cluster, on explicit opt-in), the CRDs
installed with kubectl, the operator run as users run it (``tessera operator`` in a subprocess),
and a fresh namespace per test.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest

from tessera.envtest import assets, controlplane
from tests import harness, issuer_kit
from tests.harness import CRDS, Cluster, Operator, client_for, create_namespace, start_operator, stop_operator


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The local control plane; with TESSERA_USE_EXISTING_CLUSTER=1, the current kubeconfig context."""
    if os.environ.get("TESSERA_USE_EXISTING_CLUSTER") == "1":
        api = client_for(None)
        yield Cluster(None, "kubectl", kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api), api)
        return
    found = assets.ensure()
    plane = controlplane.ControlPlane(found, directory=tmp_path_factory.mktemp("control-plane"))
    try:
        info = plane.start()
        api = client_for(info.kubeconfig)
        yield Cluster(
            info.kubeconfig,
            str(info.kubectl),
            kubernetes.client.CoreV1Api(api),
            kubernetes.client.CustomObjectsApi(api),
            api,
            garbage_collected=found.has_controller_manager,
        )
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> None:
    """Install the CRDs exactly as the README tells users to, and wait until they are served."""
    cluster.kubectl("apply", "-f", str(CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster, crds: None, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Operator]:
    namespace = create_namespace(cluster, "tessera-system")
    running = start_operator(cluster, namespace, tmp_path_factory.mktemp("operator") / "operator.log")
    failed_before = request.session.testsfailed
    try:
        yield running
    finally:
        stop_operator(running)
        cluster.core.delete_namespace(namespace)
        if request.session.testsfailed > failed_before:
            print(f"\n--- operator log (tail) ---\n{running.logs()[-6000:]}")


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    name = create_namespace(cluster, "t")
    yield name
    cluster.core.delete_namespace(name)


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A control plane of its own (CRDs installed), for a test that runs operators with unusual settings
    or several of them; it starts in a few seconds and shares nothing with the session's cluster."""
    if os.environ.get("TESSERA_USE_EXISTING_CLUSTER") == "1":
        pytest.fail("this test needs a private control plane; it cannot run against an existing cluster")
    found = assets.ensure()
    plane = controlplane.ControlPlane(found, directory=tmp_path / "control-plane", with_controller_manager=False)
    try:
        info = plane.start()
        api = client_for(info.kubeconfig)
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        private = Cluster(info.kubeconfig, str(info.kubectl), core, custom, api, garbage_collected=False)
        private.kubectl("apply", "-f", str(CRDS))
        private.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
        yield private
    finally:
        plane.stop()


REFETCH_SECONDS = 3


@dataclasses.dataclass(frozen=True)
class IssuerStack:
    """A control plane whose API server trusts the issuer, the operator and the issuer on it."""

    cluster: Cluster
    plane: controlplane.ControlPlane
    namespace: str  # the operator's and the issuer's
    operator: Operator
    issuer: issuer_kit.Issuer


@pytest.fixture(scope="session")
def issuer_stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[IssuerStack]:
    """Started once for the issuer tests: its port is chosen first, because the API server's JWT
    authenticator is configured with the issuer's URL at start (it fetches the discovery document
    when the issuer comes up)."""
    if os.environ.get("TESSERA_USE_EXISTING_CLUSTER") == "1":
        pytest.fail("the issuer tests need a private control plane configured to trust the issuer")
    folder = tmp_path_factory.mktemp("issuer-stack")
    tls = issuer_kit.tls_files(folder / "tls")
    port = harness.free_port()
    url = f"https://127.0.0.1:{port}"
    failed_before = request.session.testsfailed
    with issuer_kit.relying_cluster(folder, url, tls) as (cluster, plane):
        namespace = create_namespace(cluster, "tessera-system")
        operator = start_operator(cluster, namespace, folder / "operator.log", extra_env={"TESSERA_ISSUER": url})
        try:
            # Unknown kids refetch at most every 3 s here (60 s by default), so a test can watch it happen.
            fast = {"TESSERA_PROVIDER_REFETCH_SECONDS": str(REFETCH_SECONDS)}
            issuer = issuer_kit.start_issuer(cluster, namespace, port, tls, folder / "issuer.log", fast)
        except BaseException:
            stop_operator(operator)
            raise
        try:
            yield IssuerStack(cluster, plane, namespace, operator, issuer)
        finally:
            harness.stop_process(issuer.process)
            stop_operator(operator)
            if request.session.testsfailed > failed_before:
                print(f"\n--- issuer log (tail) ---\n{issuer.logs()[-6000:]}")
                print(f"\n--- operator log (tail) ---\n{operator.logs()[-4000:]}")


@pytest.fixture
def kit_ns(issuer_stack: IssuerStack) -> Iterator[str]:
    """A fresh namespace on the issuer stack's cluster."""
    name = create_namespace(issuer_stack.cluster, "iss")
    yield name
    issuer_stack.cluster.core.delete_namespace(name)
