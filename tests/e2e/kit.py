"""What the end-to-end tests do in a real cluster: install, apply the examples as a user would, run
workloads that call the ledger from their Pods, and read what those workloads saw."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import yaml

from tessera.envtest import images, node
from tests import waiting
from tests.chart_kit import Helm
from tests.harness import EXAMPLES, ROOT, Cluster

CHART = ROOT / "charts" / "tessera"
RELEASE, HOME = "tessera", "tessera-system"
LEDGER = "http://ledger.shop.svc"
ISSUER_URL = f"https://{RELEASE}.{HOME}.svc"
TOKEN_DIR = "/var/run/tessera/token"
KUBE_TOKEN_DIR = "/var/run/secrets/tessera"
BUNDLE_DIR = "/var/run/tessera/bundle"
EGRESS = "127.0.0.1:9001"
TESSERA_KINDS = ",".join(
    f"{k}.iam.tessera.dev" for k in ("serviceaccounts", "serviceaccountkeys", "roles", "rolebindings")
)
EXAMPLE_NAMESPACES = ("shop", "tenant-a", "tenant-b")
# Pods of the tests run as the chart's and the examples' do.
RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


@dataclasses.dataclass(frozen=True)
class Images:
    tessera: str
    apps: str
    built: tuple[images.Image, ...] = ()

    def chart_values(self) -> list[str]:
        repository, tag = self.tessera.rsplit(":", 1)
        policy = os.environ.get("TESSERA_E2E_PULL_POLICY", "IfNotPresent" if not self.built else "Never")
        return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                "--set", f"image.pullPolicy={policy}"]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Release:
    kube: Cluster
    helm: Helm
    images: Images
    before: frozenset[tuple[str, str, str, str]]  # every object before the install

    def upgrade(self, *values: str) -> None:
        self.helm("upgrade", RELEASE, str(CHART), "-n", HOME, "--reuse-values", *values)


def wait_rollout(kube: Cluster, namespace: str, deployment: str, timeout: str = "180s") -> None:
    kube.kubectl("rollout", "status", f"deployment/{deployment}", "-n", namespace, f"--timeout={timeout}")


def node_memory(info: node.NodeInfo) -> dict[str, float]:
    usage = node.memory(info)
    return {"total": round(sum(usage.values()), 1), **usage}


# --- the examples --------------------------------------------------------------------------------


def swap_images(documents: Sequence[dict[str, Any]], found: Images) -> list[dict[str, Any]]:
    """The example's Deployment with its two images replaced by the ones built here; nothing else changed."""
    swapped: list[dict[str, Any]] = json.loads(json.dumps(list(documents)))
    for doc in swapped:
        if doc and doc.get("kind") == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                is_sidecar = container["args"][:1] == ["sidecar"] if "args" in container else False
                container["image"] = found.tessera if is_sidecar else found.apps
    return swapped


def apply_examples(release: Release) -> None:
    """Every file of examples/ with ``kubectl apply -f``, as the README says; the workload's images swapped."""
    for path in sorted(EXAMPLES.glob("*.yaml")):
        if "image:" in path.read_text():
            documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
            text = "\n---\n".join(yaml.safe_dump(d) for d in swap_images(documents, release.images))
            release.kube.kubectl("apply", "-f", "-", stdin=text)
        else:
            release.kube.kubectl("apply", "-f", str(path))


def not_ready(kube: Cluster) -> list[str]:
    """Tessera objects in the examples' namespaces whose Ready condition is not True."""
    pending = []
    for namespace in EXAMPLE_NAMESPACES:
        listed = json.loads(kube.kubectl("get", TESSERA_KINDS, "-n", namespace, "-o", "json").stdout)["items"]
        for item in listed:
            ready = [c for c in (item.get("status") or {}).get("conditions", []) if c["type"] == "Ready"]
            if not ready or ready[0]["status"] != "True":
                pending.append(f"{item['kind']} {namespace}/{item['metadata']['name']}")
    return pending


def wait_examples_ready(kube: Cluster) -> None:
    waiting.until(lambda: not not_ready(kube), timeout=120, what="every example Ready")
    wait_rollout(kube, "shop", "ledger")
    wait_rollout(kube, "shop", "billing")


# --- workloads that call the ledger ----------------------------------------------------------------


def caller_pod(name: str, account: str | None, image: str, command: list[str]) -> dict[str, Any]:
    """A Pod in shop running the e2e client with ``account``'s token Secret mounted (none: no token)."""
    mounts = [{"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}] if account else []
    volumes = [{"name": "token", "secret": {"secretName": f"{account}-tessera-token"}}] if account else []
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "e2e-caller"}},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "command": command,
                    "volumeMounts": mounts,
                    "securityContext": RESTRICTED,
                }
            ],
            "volumes": volumes,
            "terminationGracePeriodSeconds": 1,
        },
    }


@dataclasses.dataclass(frozen=True)
class Caller:
    """A Pod that calls the ledger in a loop with its account's mounted token, logging every call."""

    kube: Cluster
    name: str
    account: str
    serving_since: float = 0.0  # from then on its calls are allowed (its grant reached every ledger replica)
    container: str = "client"

    def calls(self, since: float = 0.0, until: float | None = None) -> list[dict[str, Any]]:
        text = self.kube.kubectl("logs", self.name, "-n", "shop", "-c", self.container).stdout
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        return [c for c in lines if c["t"] >= since and (until is None or c["t"] <= until)]

    def once(self, path: str = "/entries/1", method: str = "GET", token: bool = True) -> dict[str, Any]:
        """One call from inside the Pod (``kubectl exec``), with or without the mounted token."""
        command = ["python3", "/app/client.py", "once", f"{LEDGER}{path}", "--method", method]
        command += ["--token-file", f"{TOKEN_DIR}/token"] if token else []
        done = self.kube.kubectl("exec", self.name, "-n", "shop", "--", *command)
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def restarts(self) -> int:
        pod = json.loads(self.kube.kubectl("get", "pod", self.name, "-n", "shop", "-o", "json").stdout)
        return sum(s.get("restartCount", 0) for s in pod["status"].get("containerStatuses", []))


def start_caller(release: Release, name: str, account: str, interval: float = 0.2, hold: bool = False) -> Caller:
    """A caller Pod; ``hold``: it reads its token once and keeps using that copy."""
    command = ["python3", "/app/client.py", "loop", f"{LEDGER}/entries/1", "--token-file", f"{TOKEN_DIR}/token",
               "--interval", str(interval), *(["--hold"] if hold else [])]  # fmt: skip
    return run_caller(release, caller_pod(name, account, release.images.apps, command), account)


def run_caller(release: Release, pod: dict[str, Any], account: str) -> Caller:
    """Start a caller Pod and return once its calls are allowed by every ledger replica."""
    name = pod["metadata"]["name"]
    release.kube.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    release.kube.kubectl("wait", "--for=condition=Ready", f"pod/{name}", "-n", "shop", "--timeout=120s")
    caller = Caller(release.kube, name, account)
    # A new account's grant reaches each ledger replica's sidecar at that Pod's next kubelet refresh of
    # the mounted bundle (replicas differ by up to a minute): wait for a run of allowed calls.
    settled = waiting.until(lambda: allowed_run(caller.calls()), timeout=240, interval=1, what=f"{name} allowed")
    return dataclasses.replace(caller, serving_since=settled)


DNS_WAITS = "calls that waited for the cluster DNS to answer again, by test and caller"


def refused_since(report: dict[str, Any], test: str, caller: Caller, began: float) -> list[dict[str, Any]]:
    """``caller``'s calls that were not allowed since ``began`` (or since it was first allowed, if later).
    The calls that had to wait for the cluster DNS (client.py) are counted in the report: not Tessera's
    doing, but not hidden either."""
    calls = caller.calls(max(began, caller.serving_since))
    report.setdefault(DNS_WAITS, {})[f"{test}, {caller.name}"] = sum("dns_waited_s" in c for c in calls)
    return [c for c in calls if c["status"] != 200]


SETTLED_RUN = 12  # calls in a row allowed: every ledger replica has the grant (kube-proxy picks at random)


def allowed_run(calls: list[dict[str, Any]]) -> float | None:
    """The time of the first call of a final run of at least SETTLED_RUN allowed calls, else None."""
    refused = max((i for i, c in enumerate(calls) if c["status"] != 200), default=-1)
    run = calls[refused + 1 :]
    return float(run[0]["t"]) if len(run) >= SETTLED_RUN else None


def start_callers(release: Release, names: Sequence[str], interval: float, hold: bool) -> list[Caller]:
    """Caller Pods started together (each with its own account's token), returned once all are allowed."""
    pods = []
    for name in names:
        command = ["python3", "/app/client.py", "loop", f"{LEDGER}/entries/1", "--token-file", f"{TOKEN_DIR}/token",
                   "--interval", str(interval), *(["--hold"] if hold else [])]  # fmt: skip
        pods.append(caller_pod(name, name, release.images.apps, command))
    apply_json(release.kube, *pods)
    release.kube.kubectl("wait", "--for=condition=Ready", *(f"pod/{n}" for n in names), "-n", "shop", "--timeout=180s")
    callers = []
    for name in names:
        caller = Caller(release.kube, name, name)
        settled = waiting.until(functools.partial(_settled, caller), timeout=240, interval=1, what=f"{name} allowed")
        callers.append(dataclasses.replace(caller, serving_since=settled))
    return callers


def _settled(caller: Caller) -> float | None:
    return allowed_run(caller.calls())


def egress_pod(
    release: Release, name: str, account: str | None, kubernetes_account: str | None = None
) -> dict[str, Any]:
    """A Pod whose app never reads a token: it calls the ledger through ``tessera sidecar --egress``, which
    attaches ``account``'s mounted token, or (``kubernetes_account``) a token exchanged at the issuer for
    the Pod's own Kubernetes token (the issuer's CA from the mounted trust bundle)."""
    command = ["python3", "/app/client.py", "loop", f"http://{EGRESS}/entries/1", "--interval", "0.5"]
    pod = caller_pod(name, None, release.images.apps, command)
    spec = pod["spec"]
    args = ["sidecar", "--namespace=shop", "--egress-only", f"--egress={EGRESS}={LEDGER}", "--listen=0.0.0.0:8181"]
    if account is not None:
        args.append(f"--token-file={TOKEN_DIR}/token")
        mounts = [{"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}]
        spec["volumes"] = [{"name": "token", "secret": {"secretName": f"{account}-tessera-token"}}]
    else:
        assert kubernetes_account is not None
        spec["serviceAccountName"] = kubernetes_account
        args += [f"--issuer-url={ISSUER_URL}", f"--kubernetes-token-file={KUBE_TOKEN_DIR}/token",
                 "--egress-audience=ledger", f"--bundle-dir={BUNDLE_DIR}"]  # fmt: skip
        mounts = [{"name": "kube-token", "mountPath": KUBE_TOKEN_DIR, "readOnly": True},
                  {"name": "bundle", "mountPath": BUNDLE_DIR, "readOnly": True}]  # fmt: skip
        token = {"serviceAccountToken": {"path": "token", "audience": ISSUER_URL, "expirationSeconds": 3600}}
        spec["volumes"] = [{"name": "kube-token", "projected": {"sources": [token]}},
                           {"name": "bundle", "configMap": {"name": "tessera-trust-bundle"}}]  # fmt: skip
    probe = {"httpGet": {"path": "/readyz", "port": 8181}, "periodSeconds": 2}
    spec["containers"].append(
        {"name": "tessera-sidecar", "image": release.images.tessera, "args": args, "volumeMounts": mounts,
         "readinessProbe": probe, "securityContext": RESTRICTED}
    )  # fmt: skip
    return pod


def sidecar_readiness(kube: Cluster, pod: str, namespace: str = "shop") -> dict[str, Any]:
    """The /readyz detail of the Tessera sidecar in ``pod`` (read from inside its container)."""
    fetch = "import urllib.request,sys;sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:8181/readyz').read().decode())"
    done = kube.kubectl("exec", pod, "-n", namespace, "-c", "tessera-sidecar", "--", "python", "-c", fetch, check=False)
    found: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    return found


def ledger_pods(kube: Cluster) -> list[str]:
    listed = json.loads(kube.kubectl("get", "pods", "-n", "shop", "-l", "app=ledger", "-o", "json").stdout)["items"]
    return [p["metadata"]["name"] for p in listed if not p["metadata"].get("deletionTimestamp")]


def channel_states(kube: Cluster) -> set[str]:
    """The live channel's state in every ledger replica's sidecar."""
    return {str((sidecar_readiness(kube, pod).get("channel") or {}).get("state")) for pod in ledger_pods(kube)}


def apply_json(kube: Cluster, *documents: dict[str, Any]) -> None:
    kube.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in documents))


def account(name: str, **spec: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": "shop"}
    return {"apiVersion": "iam.tessera.dev/v1alpha1", "kind": "ServiceAccount", "metadata": meta, "spec": spec}


def binding(name: str, role: str, accounts: Sequence[str]) -> dict[str, Any]:
    members = [{"serviceAccount": {"name": a}} for a in accounts]
    spec = {"roleRef": {"name": role}, "members": members}
    return {"apiVersion": "iam.tessera.dev/v1alpha1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": "shop"}, "spec": spec}  # fmt: skip


def summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)], 2),  # nearest rank
        "max": round(ordered[-1], 2),
        "min": round(ordered[0], 2),
    }


def now() -> float:
    return time.time()


def machine_addresses() -> list[str]:
    """The machine's own IPv4 addresses beyond loopback."""
    import subprocess

    listed = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True).stdout)
    return [a["local"] for i in listed for a in i.get("addr_info", []) if not a["local"].startswith("127.")]
