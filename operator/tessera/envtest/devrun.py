"""``make run``: a local control plane, the CRDs, the examples, and the operator in the foreground.

With ``TESSERA_USE_EXISTING_CLUSTER=1`` the current kubeconfig context is used instead of a local
control plane; nothing else touches a real cluster. Files (kubeconfig, certificates, logs) live in
``.run/control-plane/``; each start is a fresh, empty cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from tessera.envtest import assets, controlplane

OPERATOR_NAMESPACE = "tessera-system"


@contextlib.contextmanager
def _cluster(root: Path) -> Iterator[tuple[dict[str, str], str]]:
    """Environment (KUBECONFIG) and kubectl path for the cluster to run against."""
    env = dict(os.environ)
    if env.get("TESSERA_USE_EXISTING_CLUSTER") == "1":
        yield env, "kubectl"
        return
    plane = controlplane.ControlPlane(assets.ensure(), directory=root / ".run" / "control-plane")
    try:
        info = plane.start()
        env["KUBECONFIG"] = str(info.kubeconfig)
        yield env, str(info.kubectl)
    finally:
        plane.stop()


def _kubectl(kubectl: str, env: dict[str, str], *args: str) -> None:
    subprocess.run([kubectl, *args], env=env, check=True)


def _install(kubectl: str, env: dict[str, str], root: Path) -> None:
    _kubectl(kubectl, env, "apply", "-f", str(root / "crds"))
    _kubectl(kubectl, env, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(root / "crds"))
    namespace = subprocess.run(
        [kubectl, "create", "namespace", OPERATOR_NAMESPACE, "--dry-run=client", "-o", "yaml"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    subprocess.run([kubectl, "apply", "-f", "-"], env=env, input=namespace, text=True, check=True)
    _kubectl(kubectl, env, "apply", "-f", str(root / "examples"))


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(root: Path) -> int:
    # Ctrl-C and SIGTERM both stop the operator, then the control plane (even when SIGINT was
    # inherited as ignored, as it is for background jobs of a non-interactive shell).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    with _cluster(root) as (env, kubectl):
        _install(kubectl, env, root)
        kubeconfig = env.get("KUBECONFIG", "~/.kube/config")
        print(
            "\nTessera is starting. In another shell:\n"
            f"  export KUBECONFIG={kubeconfig}\n"
            f"  export PATH={Path(kubectl).parent}:$PATH   # kubectl matching the API server\n"
            "  kubectl get tessera -A\n"
            "Stop with Ctrl-C.\n",
            flush=True,
        )
        env["TESSERA_NAMESPACE"] = OPERATOR_NAMESPACE
        operator = subprocess.Popen([sys.executable, "-m", "tessera.cli", "operator", "--liveness", ""], env=env)
        try:
            return operator.wait()
        except KeyboardInterrupt:
            print("\nStopping the operator and the control plane.", flush=True)
            operator.terminate()
            operator.wait(timeout=30)
            return 0
