"""The pieces integration tests and benchmarks share: a cluster handle with kubectl and dict-returning
reads, the operator started as users start it (``tessera operator`` in a subprocess), namespaces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import kubernetes

from tessera.api import meta
from tests import waiting

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"
EXAMPLES = ROOT / "examples"


@dataclasses.dataclass(frozen=True)
class Cluster:
    kubeconfig: Path | None
    kubectl_path: str
    core: kubernetes.client.CoreV1Api
    custom: kubernetes.client.CustomObjectsApi
    api: kubernetes.client.ApiClient
    garbage_collected: bool = True  # False for a bare API server without kube-controller-manager

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret as a dict (data still base64), or None when absent."""
        try:
            return self.to_dict(self.core.read_namespaced_secret(name, namespace))
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def secrets(self, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        listed = self.to_dict(self.core.list_namespaced_secret(namespace, label_selector=label_selector))
        items: list[dict[str, Any]] = listed["items"]
        return items

    def configmap_data(self, namespace: str, name: str) -> dict[str, str]:
        data: dict[str, str] = self.to_dict(self.core.read_namespaced_config_map(name, namespace)).get("data") or {}
        return data

    def custom_object(self, namespace: str, plural: str, name: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(meta.GROUP, meta.VERSION, namespace, plural, name)
        assert isinstance(obj, dict)
        return obj

    def to_dict(self, obj: object) -> dict[str, Any]:
        result: dict[str, Any] = self.api.sanitize_for_serialization(obj)
        return result

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.kubectl_path, *args],
            env=self.env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result


def client_for(kubeconfig: Path | None) -> kubernetes.client.ApiClient:
    api: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(
        config_file=str(kubeconfig) if kubeconfig else None
    )
    return api


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass
class Operator:
    namespace: str
    log_path: Path
    process: subprocess.Popen[bytes]
    metrics_port: int = 0

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        """The operator's /metrics, parsed: ``name{label="value",...}`` -> value."""
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                found[series] = float(value)
        return found


def start_operator(
    cluster: Cluster,
    namespace: str,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    kubeconfig: Path | None = None,
    args: Sequence[str] = (),
    launcher: Sequence[str] = ("-m", "tessera.cli"),
    ready_timeout: float = 60,
) -> Operator:
    """``tessera operator`` in a subprocess, ready once its liveness endpoint answers. ``kubeconfig``
    gives the operator another identity than the cluster's admin (readiness is still checked as admin);
    ``args`` are more ``tessera operator`` options; ``launcher`` is what the Python interpreter runs
    (the memory bench runs the CLI under tracemalloc)."""
    port, metrics_port = free_port(), free_port()
    env = {
        **cluster.env(),
        **({"KUBECONFIG": str(kubeconfig)} if kubeconfig is not None else {}),
        "TESSERA_NAMESPACE": namespace,
        "TESSERA_REFRESH_CHECK_SECONDS": "2",
        "TESSERA_CLOCK_LEEWAY_SECONDS": "5",
        **(extra_env or {}),
    }
    log = log_path.open("wb")
    liveness, metrics = f"http://127.0.0.1:{port}/healthz", f"127.0.0.1:{metrics_port}"
    cmd = [sys.executable, *launcher, "operator", "--liveness", liveness, "--metrics", metrics, *args]
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    operator = Operator(namespace, log_path, process, metrics_port)

    def alive_and_ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the operator exited with {process.returncode}:\n{operator.logs()[-4000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return _published(cluster, namespace)
        return False

    try:
        waiting.until(
            alive_and_ready, timeout=ready_timeout, what="the operator's liveness endpoint and published JWKS"
        )
    except BaseException:
        stop_process(process)  # never leave an operator running that nobody will stop
        raise
    return operator


def _published(cluster: Cluster, namespace: str) -> bool:
    """The startup handler has run once the issuer JWKS ConfigMap exists."""
    items = cluster.core.list_namespaced_config_map(namespace, field_selector="metadata.name=tessera-issuer-jwks").items
    return bool(items)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_operator(operator: Operator) -> None:
    stop_process(operator.process)


def create_namespace(cluster: Cluster, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name)))
    return name


@contextlib.contextmanager
def local_cluster(folder: Path, pool: int | None = None) -> Iterator[Cluster]:
    """A control plane of its own in ``folder`` with the CRDs installed (for benchmarks)."""
    from tessera.envtest import assets, controlplane

    with controlplane.ControlPlane(assets.ensure(), directory=folder) as plane:
        info = plane.start()
        api = client_for(info.kubeconfig)
        if pool is not None:
            api.configuration.connection_pool_maxsize = pool
        cluster = Cluster(
            info.kubeconfig,
            str(info.kubectl),
            kubernetes.client.CoreV1Api(api),
            kubernetes.client.CustomObjectsApi(api),
            api,
        )
        cluster.kubectl("apply", "-f", str(CRDS))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
        yield cluster
