"""The ``helm`` client for the chart tests, without a release download: built once from the Go module proxy.

Order: ``$TESSERA_HELM`` (a binary), then the cache ``<cache>/helm/<version>/helm``, then
``go install helm.sh/helm/v3/cmd/helm@<version>`` into that folder (about two minutes on 2 cores),
with the version variables Helm's release builds set.
The version is pinned here and nowhere else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tessera.envtest import assets

HELM_VERSION = "v3.22.0"
MODULE = "helm.sh/helm/v3"


def cached() -> Path:
    return assets.cache_root() / "helm" / HELM_VERSION / "helm"


def ldflags(helm_go_mod: str) -> str:
    """The version variables Helm's own Makefile sets: its version, and the Kubernetes version its client
    libraries speak (``helm template`` and ``helm lint`` assume it; the default would be v1.20)."""
    match = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", helm_go_mod, re.M)
    if match is None:
        raise assets.AssetError("no k8s.io/client-go requirement in helm's go.mod")
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"]
    for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
        flags += [f"-X {pkg}.k8sVersionMajor=1", f"-X {pkg}.k8sVersionMinor={match.group(1)}"]
    return " ".join(flags)


def _go(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(["go", *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise assets.AssetError(f"go {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def build(target: Path) -> Path:
    """``go install`` helm into ``target``'s folder (staged, then moved, so a broken build leaves no binary)."""
    if shutil.which("go") is None:
        raise assets.AssetError("the 'go' toolchain is not on PATH; it is needed once to build helm")
    staging = target.parent.with_name(f".{HELM_VERSION}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOBIN": str(staging), "GOFLAGS": ""}
    print(f"[helm] building {MODULE}/cmd/helm@{HELM_VERSION} into {target.parent}", file=sys.stderr, flush=True)
    started = time.monotonic()
    info = json.loads(_go(["mod", "download", "-json", f"{MODULE}@{HELM_VERSION}"], env))
    flags = ldflags(Path(info["GoMod"]).read_text())
    _go(["install", "-trimpath", "-ldflags", flags, f"{MODULE}/cmd/helm@{HELM_VERSION}"], env)
    if target.parent.exists():
        shutil.rmtree(target.parent)
    os.replace(staging, target.parent)
    print(f"[helm] built in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return target


def ensure() -> Path:
    """The path of a helm v3 binary."""
    return assets.explicit_or_cached("TESSERA_HELM", cached(), build)


def main() -> int:
    return assets.print_path(ensure)


if __name__ == "__main__":
    sys.exit(main())
