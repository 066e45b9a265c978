"""Debian packages a real node needs, installed with apt when missing (CI starts from a bare machine).

containerd, runc and the CNI plugins run Pods; buildah builds images without a registry or a
daemon; debootstrap makes the base image; iptables serves kube-proxy inside the node's network
namespace. Nothing else on the machine is configured: the node keeps its own configuration files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# (a file that proves the package is there, the package providing it)
REQUIRED = (
    ("/usr/bin/containerd", "containerd"),
    ("/usr/sbin/runc", "runc"),
    ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ("/usr/bin/buildah", "buildah"),
    ("/usr/sbin/debootstrap", "debootstrap"),
    ("/usr/sbin/iptables", "iptables"),
    ("/usr/bin/unshare", "util-linux"),
    ("/usr/sbin/ip", "iproute2"),
    ("/usr/lib/x86_64-linux-gnu/libc.a", "libc6-dev"),  # the pause binary is linked statically
)


class HostError(RuntimeError):
    """The machine cannot run a node (not root, no apt, a package failed to install)."""


def missing() -> list[str]:
    return sorted({package for path, package in REQUIRED if not Path(path).exists()})


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, check=False)


def ensure() -> None:
    """Install whatever of :data:`REQUIRED` is missing (root and apt needed only then)."""
    packages = missing()
    if not packages:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise HostError(f"these Debian packages are missing and cannot be installed here: {' '.join(packages)}")
    print(f"[node] installing {' '.join(packages)} with apt-get", file=sys.stderr, flush=True)
    install = ("install", "-y", "-qq", "--no-install-recommends", *packages)
    done = _apt(*install)
    if done.returncode != 0:  # stale or missing package lists
        _apt("update", "-qq")
        done = _apt(*install)
    if done.returncode != 0:
        raise HostError(f"apt-get install {' '.join(packages)} failed:\n{done.stderr[-3000:]}")
    still = missing()
    if still:
        raise HostError(f"installed, but still missing: {' '.join(still)}")
