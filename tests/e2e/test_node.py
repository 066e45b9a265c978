"""The node itself, on a node of each test's own: stopping it restores the machine exactly, and a run
that was killed without stopping is cleaned up by the next start. (These need this machine; with
``TESSERA_USE_EXISTING_CLUSTER=1`` they are deselected, not skipped: there is no node of ours.)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tessera.envtest import node
from tests import waiting
from tests.harness import ROOT

pytestmark = pytest.mark.local_node

# Kernel counters and clocks that change by themselves.
VOLATILE = (
    "fs.dentry-state", "fs.file-nr", "fs.inode-nr", "fs.inode-state", "fs.quota.", "kernel.random.",
    "kernel.ns_last_pid", "kernel.pty.nr", "net.netfilter.nf_conntrack_count", "kernel.sched_domain",
    "fs.aio-nr", "kernel.tainted", "vm.stat_", "fs.nfs.", "net.ipv4.tcp_mem", "net.ipv4.udp_mem",
)  # fmt: skip


def sysctls() -> dict[str, str]:
    """Every kernel setting. A folder that vanishes while it is read (a killed node's network device,
    which the kernel removes a moment after its namespace) is skipped: os.walk ignores what it cannot list."""
    found = {}
    for folder, _, files in os.walk("/proc/sys"):
        for file in files:
            path = Path(folder, file)
            name = ".".join(path.relative_to("/proc/sys").parts)
            if not name.startswith(VOLATILE):
                with contextlib.suppress(OSError):
                    found[name] = path.read_text().strip()
    return found


def command(*cmd: str) -> list[str]:
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return sorted(line for line in text.splitlines() if line and not line.startswith("#"))


def host() -> dict[str, Any]:
    """The machine's settings a node could change: kernel settings, firewall, devices, addresses, routes,
    mounts, cgroups, network namespaces."""
    table = Path("/proc/self/mountinfo").read_text().splitlines()
    mounts = sorted(" ".join(line.split()[4:5] + line.split(" - ")[1].split()[:1]) for line in table)
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob("*/*") if p.is_dir())
    return {
        "sysctl": sysctls(),
        "iptables": command("iptables-save") + command("ip6tables-save"),
        "links": [" ".join(line.split()[1:3]) for line in command("ip", "-o", "link")],
        "addresses": command("ip", "-o", "addr"),
        "routes": command("ip", "route", "show", "table", "all") + command("ip", "-6", "route", "show", "table", "all"),
        "mounts": mounts,
        "cgroups": cgroups,
        "netns": sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else [],
    }


def differences(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    changed: dict[str, Any] = {}
    delta: dict[str, Any]
    for part in before:
        if part == "sysctl":
            keys = set(before[part]) | set(after[part])
            delta = {
                k: (before[part].get(k), after[part].get(k)) for k in keys if before[part].get(k) != after[part].get(k)
            }
        else:
            delta = {
                "gone": sorted(set(before[part]) - set(after[part])),
                "new": sorted(set(after[part]) - set(before[part])),
            }
            delta = {k: v for k, v in delta.items() if v}
        if delta:
            changed[part] = delta
    return changed


def test_stopping_restores_the_machine() -> None:
    before = host()
    info = node.start()
    try:
        during = differences(before, host())
        # Proof that there was something to restore: kubelet's kernel settings, the uplink, its cgroups.
        assert {"vm.overcommit_memory", "kernel.panic_on_oops"} <= set(during.get("sysctl", {})), during
        assert during.get("links", {}).get("new"), during
        assert info.kubectl.is_file() and info.kubeconfig.is_file()
    finally:
        node.stop()
    assert differences(before, host()) == {}
    assert node.running() is None and not node.state_file().exists()


def test_a_killed_run_is_cleaned_up_by_the_next_start(tmp_path: Path) -> None:
    before = host()
    # A test run that started a node and was killed (SIGKILL: no cleanup of its own ran).
    script = "from tessera.envtest import node; import signal; node.start(); print('ready', flush=True); signal.pause()"
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == b"ready"
        run_folder = Path(json.loads(node.state_file().read_text())["directory"])
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    # The node died with its owner (the kernel killed its PID namespace); what it changed outside stays.
    waiting.until(lambda: node.running() is None, what="the node gone with its owner")
    left = differences(before, host())
    assert "vm.overcommit_memory" in left.get("sysctl", {}) and left.get("cgroups"), left
    assert run_folder.is_dir() and node.state_file().exists()

    info = node.start()  # cleans up first, then starts
    try:
        assert not run_folder.exists()
        assert info.directory != run_folder
    finally:
        node.stop()
    assert differences(before, host()) == {}
