"""Running Tessera the way the Helm chart does: the helm client, the chart's identity (a token of its
Kubernetes ServiceAccount) and ``tessera operator`` with the Deployment's arguments and environment."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from tessera.envtest import helm
from tests.harness import ROOT, Cluster, Operator, client_for, start_operator

CHART = ROOT / "charts" / "tessera"
RELEASE, HOME = "tessera", "tessera-system"


class Helm:
    """The helm client against one cluster, with its own config and cache folders."""

    def __init__(self, home: Path, cluster: Cluster | None = None) -> None:
        self.binary = helm.ensure()
        env = cluster.env() if cluster is not None else dict(os.environ)
        self.env = {**env, **{f"HELM_{k}_HOME": str(home / k.lower()) for k in ("CACHE", "CONFIG", "DATA")}}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.binary), *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed: {done.stderr}")
        return done

    def manifest(self) -> list[dict[str, Any]]:
        text = self("get", "manifest", RELEASE, "-n", HOME).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]


def operator_identity(cluster: Cluster, folder: Path, account: str = RELEASE) -> Cluster:
    """A cluster handle authenticated as the chart's Kubernetes ServiceAccount ``account``, with a token
    from the TokenRequest API: what the Pod gets, so RBAC sees exactly the chart's subject."""
    token = cluster.kubectl("create", "token", account, "-n", HOME, "--duration=1h").stdout.strip()
    assert cluster.kubeconfig is not None
    config = json.loads(cluster.kubeconfig.read_text())
    config["users"] = [{"name": account, "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = account
    path = folder / f"{account}.kubeconfig"
    path.write_text(json.dumps(config))
    api = client_for(path)
    core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
    return Cluster(path, cluster.kubectl_path, core, custom, api, garbage_collected=False)


def deployment_in(manifest: list[dict[str, Any]], name: str = RELEASE) -> dict[str, Any]:
    [deployment] = [d for d in manifest if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    return deployment


def run_as_chart(
    cluster: Cluster, identity: Cluster, manifest: list[dict[str, Any]], log: Path, **overrides: str
) -> Operator:
    """``tessera operator`` with the Deployment's arguments and environment (but ``overrides``), as the
    chart's identity."""
    [container] = deployment_in(manifest)["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["tessera"] and container["args"][0] == "operator"
    args = [a for a in container["args"][1:] if not a.startswith(("--liveness", "--metrics"))]  # ports: start_operator
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["POD_ID"] = log.stem  # from the downward API in the Pod
    env.update(overrides)
    return start_operator(cluster, HOME, log, extra_env=env, kubeconfig=identity.kubeconfig, args=args)
