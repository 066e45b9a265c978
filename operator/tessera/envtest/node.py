"""A real one-node Kubernetes cluster on this machine, the project's own equivalent of kind.

``start`` builds (once, cached) what it needs, then runs the whole node under ``unshare`` in new
PID, mount and network namespaces (see ``nodeinit``), so a node's mounts, network devices,
iptables rules and network sysctls exist only inside it and vanish with it, even after SIGKILL.
What it changes on the machine itself, and ``stop`` (or the next ``start``, after a crash) restores:

- the host end of one veth pair (the host's only way in: the API server at the node's address);
- the kernel settings kubelet sets machine-wide (``GLOBAL_SYSCTLS``), saved before it starts;
- kubelet's cgroups under ``/<CGROUP_ROOT>`` in each cgroup hierarchy;
- the run folder.

A state file under the cache records all of it before anything changes. One node runs at a time.
Nothing a Pod sends leaves the machine: the node's namespace has no route beyond the uplink, and
its forwarding rules drop whatever a Pod sends toward the uplink.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tessera.envtest import assets, hostpkgs, images
from tessera.envtest import controlplane as cp
from tessera.envtest import nodeconfig as nc
from tessera.envtest import pki as certs

# Set by kubelet on the machine's kernel (not per namespace), as kind's nodes do too.
GLOBAL_SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
UPLINK_CANDIDATES = tuple(f"172.30.255.{4 * i}/30" for i in range(64))
STOP_TIMEOUT = 60.0


class NodeError(RuntimeError):
    """The node could not be started or stopped (the message says why, with log tails)."""


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """What a running node offers the host."""

    kubeconfig: Path
    server: str
    directory: Path
    kubectl: Path
    inner_pid: int
    uplink: nc.Uplink
    timings: dict[str, float]


def state_file() -> Path:
    return assets.cache_root() / "node-run.json"


def cgroup_roots() -> list[Path]:
    """``/<CGROUP_ROOT>`` in every mounted cgroup hierarchy (v1 controllers or the v2 tree)."""
    base = Path("/sys/fs/cgroup")
    tops = [p for p in base.iterdir() if p.is_dir() and not p.is_symlink()] if base.is_dir() else []
    if (base / "cgroup.controllers").exists():  # cgroup v2
        tops = [base]
    return [top / nc.CGROUP_ROOT for top in tops]


def read_sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


def _proc_start(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), None if it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else fields[19]


def _alive(pid: int | None, started: str | None) -> bool:
    return bool(pid) and started is not None and _proc_start(pid or 0) == started


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NodeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def choose_uplink(used: Sequence[str]) -> nc.Uplink:
    """The first candidate /30 that overlaps none of the machine's networks (``used``, CIDR strings)."""
    taken = [ipaddress.ip_network(n, strict=False) for n in used]
    for candidate in UPLINK_CANDIDATES:
        network = ipaddress.ip_network(candidate)
        if not any(network.overlaps(t) for t in taken if t.version == 4 and t.prefixlen > 0):
            return nc.Uplink(candidate)
    raise NodeError("no free /30 for the uplink among 172.30.255.0/24")


def _host_networks() -> list[str]:
    routes = json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]")
    addrs = json.loads(_ip("-j", "-4", "addr") or "[]")
    nets = [r["dst"] for r in routes if r.get("dst") not in (None, "default")]
    nets += [f"{a['local']}/{a['prefixlen']}" for i in addrs for a in i.get("addr_info", [])]
    return [n if "/" in n else f"{n}/32" for n in nets]


# --- preparing a run folder ----------------------------------------------------------------------


def _kubeconfig(path: Path, server: str, pki: Path, stem: str, user: str) -> None:
    config = cp.kubeconfig(server, pki / "ca.crt", pki / f"{stem}.crt", pki / f"{stem}.key", user)
    path.write_text(json.dumps(config, indent=2))


def prepare(layout: nc.Layout) -> None:
    """Write everything the node starts from: certificates, kubeconfigs, configuration files."""
    for folder in (layout.var_lib, layout.var_log, layout.config / "cni", layout.pki):
        folder.mkdir(parents=True, exist_ok=True)
    _, client_ca = certs.write_pki(layout.pki, serving_ips=(nc.NODE_IP, layout.uplink.node_ip))
    node_user = f"system:node:{nc.NODE_NAME}"
    certs.write_pair(layout.pki, "kubelet", certs.issue(client_ca, node_user, organizations=["system:nodes"]))
    kubelet_client = certs.issue(client_ca, "kube-apiserver-kubelet-client", organizations=["system:masters"])
    certs.write_pair(layout.pki, "apiserver-kubelet-client", kubelet_client)
    _kubeconfig(
        layout.kubeconfig, f"https://{layout.uplink.node_ip}:{nc.API_PORT}", layout.pki, "admin", certs.ADMIN_USER
    )
    _kubeconfig(layout.inner_kubeconfig, f"https://127.0.0.1:{nc.API_PORT}", layout.pki, "admin", certs.ADMIN_USER)
    _kubeconfig(layout.kubelet_kubeconfig, f"https://127.0.0.1:{nc.API_PORT}", layout.pki, "kubelet", node_user)
    files = {
        "containerd.toml": nc.containerd_toml(layout),
        "cni/10-tessera.conflist": json.dumps(nc.cni_conflist(), indent=2),
        "kubelet.json": json.dumps(nc.kubelet_config(layout, layout.pki / "client-ca.crt"), indent=2),
        "kube-proxy.json": json.dumps(nc.kube_proxy_config(layout), indent=2),
        "Corefile": nc.corefile(layout),
        "resolv.conf": "",  # Pods get the cluster DNS and nothing of the machine's resolvers
    }
    for name, text in files.items():
        (layout.config / name).write_text(text)
    (layout.directory / "node.json").write_text(layout.to_json())


# --- state -------------------------------------------------------------------------------------


def _load_state() -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return None
    return state


def _save_state(state: dict[str, Any]) -> None:
    path = state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".partial")
    staging.write_text(json.dumps(state, indent=2))
    os.replace(staging, path)


def _log(message: str) -> None:
    print(f"[node] {message}", file=sys.stderr, flush=True)


def _remove_cgroups(timeout: float = 30.0) -> None:
    """Remove kubelet's cgroup tree (deepest first) once the killed processes have left it."""
    deadline = time.monotonic() + timeout
    for root in cgroup_roots():
        if not root.is_dir():
            continue
        for folder in [*sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)), root]:
            while folder.is_dir():
                try:
                    folder.rmdir()
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise NodeError(f"cannot remove cgroup {folder}: {exc}") from exc
                    time.sleep(0.1)


def _teardown(state: dict[str, Any]) -> None:
    """Stop the node of ``state`` (if still running) and restore everything it changed."""
    unshare, inner = int(state.get("unshare_pid") or 0), int(state.get("inner_pid") or 0)
    if _alive(inner, state.get("inner_started")):
        with contextlib.suppress(ProcessLookupError):
            os.kill(inner, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(unshare, state.get("unshare_started")) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(unshare, state.get("unshare_started")):
        _log("the node did not stop in time; killing it")
        os.kill(unshare, signal.SIGKILL)  # --kill-child: the node's PID 1 and every process under it die
    while _alive(inner, state.get("inner_started")):
        time.sleep(0.05)
    host_if = state.get("host_if")
    if host_if:
        _ip("link", "del", host_if, check=False)  # already gone with the namespace, normally
    for name, value in state.get("sysctls", {}).items():
        if read_sysctl(name) != value:
            Path("/proc/sys", *name.split(".")).write_text(value)
    _remove_cgroups()
    directory = state.get("directory")
    if directory and state.get("owned"):
        shutil.rmtree(directory, ignore_errors=True)
    state_file().unlink(missing_ok=True)


def _status(layout: nc.Layout) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(layout.status_file.read_text())
    except (OSError, ValueError):
        return {"phase": "launching"}
    return data


def _tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return f"(no {path})"


# --- the public operations ---------------------------------------------------------------------


def running() -> NodeInfo | None:
    """The node this machine runs, if any."""
    state = _load_state()
    if state is None or not _alive(state.get("unshare_pid"), state.get("unshare_started")):
        return None
    layout = nc.Layout.from_json((Path(state["directory"]) / "node.json").read_text())
    status = _status(layout)
    if status.get("phase") != "ready":
        return None
    kubectl = assets.ensure().path("kubectl")
    server = f"https://{layout.uplink.node_ip}:{nc.API_PORT}"
    return NodeInfo(
        layout.kubeconfig, server, layout.directory, kubectl, state["inner_pid"], layout.uplink, status["timings"]
    )


def recover() -> bool:
    """Clean up after a node that was not stopped (its owner crashed or was killed); True if there was one.
    A node started on its own (``node start``) whose process still runs is left alone."""
    state = _load_state()
    if state is None:
        if any(root.is_dir() for root in cgroup_roots()):
            _remove_cgroups()
            return True
        return False
    owner = state.get("owner_pid")
    alive = _alive(state.get("unshare_pid"), state.get("unshare_started"))
    if alive and (owner is None or _alive(owner, state.get("owner_started"))):
        folder = state["directory"]
        raise NodeError(f"a node is already running (folder {folder}); stop it: python -m tessera.envtest node stop")
    _log(f"cleaning up after a node that was not stopped (folder {state.get('directory')})")
    _teardown(state)
    return True


def start(
    directory: Path | None = None,
    *,
    preload: Sequence[images.Image] = (),
    sync_frequency: str = nc.DEFAULT_SYNC_FREQUENCY,
    attached: bool = True,
    timeout: float = 300.0,
) -> NodeInfo:
    """Start the node and return once it is usable: API server ready, node Ready, DNS answering.
    ``attached``: the node dies with this process (tests); otherwise it runs until :func:`stop`."""
    if os.geteuid() != 0:
        raise NodeError("a node needs root (network namespaces, mounts, cgroups)")
    hostpkgs.ensure()
    recover()
    control_plane, node_binaries = assets.ensure(), assets.ensure_node()
    pause = images.pause()
    owned = directory is None
    folder = Path(tempfile.mkdtemp(prefix="tessera-node-")) if directory is None else directory.resolve()
    if not owned:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    layout = nc.Layout(
        directory=folder,
        control_plane=control_plane.directory,
        node_binaries=node_binaries,
        uplink=choose_uplink(_host_networks()),
        pause_image=pause.ref,
        image_archives=(pause.archive, *(i.archive for i in preload)),
        sync_frequency=sync_frequency,
    )
    prepare(layout)
    state: dict[str, Any] = {
        "directory": str(folder),
        "owned": owned,
        "sysctls": {name: read_sysctl(name) for name in GLOBAL_SYSCTLS},
        "owner_pid": os.getpid() if attached else None,
        "owner_started": _proc_start(os.getpid()) if attached else None,
    }
    _save_state(state)  # before anything changes, so a crash at any later point can be undone
    try:
        return _launch(layout, state, attached, timeout)
    except BaseException:
        _teardown(state)
        raise


def _launch(layout: nc.Layout, state: dict[str, Any], attached: bool, timeout: float) -> NodeInfo:
    started = time.monotonic()
    cmd = [
        "unshare", "--pid", "--fork", "--kill-child", "--mount", "--net", "--mount-proc", "--propagation", "private",
        "--", sys.executable, "-m", "tessera.envtest.nodeinit", str(layout.directory / "node.json"),
    ]  # fmt: skip
    log = layout.directory / "node.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=cp.child_env(),
            start_new_session=True, preexec_fn=cp._die_with_parent() if attached else None,
        )  # fmt: skip
    state.update(unshare_pid=popen.pid, unshare_started=_proc_start(popen.pid))
    _save_state(state)
    deadline = time.monotonic() + timeout
    while not (inner := _children(popen.pid)):
        if popen.poll() is not None or time.monotonic() > deadline:
            raise NodeError(f"unshare did not start the node:\n{_tail(log)}")
        time.sleep(0.01)
    state.update(inner_pid=inner[0], inner_started=_proc_start(inner[0]), host_if=f"tsn{secrets.token_hex(3)}")
    _save_state(state)
    uplink = layout.uplink
    _ip("link", "add", state["host_if"], "type", "veth", "peer", "name", nc.UPLINK, "netns", str(inner[0]))
    _ip("addr", "add", f"{uplink.host_ip}/{uplink.prefix}", "dev", state["host_if"])
    _ip("link", "set", state["host_if"], "up")
    while (phase := _status(layout).get("phase")) != "ready":
        if phase == "failed" or popen.poll() is not None:
            raise NodeError(f"the node failed: {_status(layout).get('message', '')}\n--- node.log ---\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise NodeError(f"the node was not ready within {timeout:.0f}s\n--- node.log ---\n{_tail(log)}")
        time.sleep(0.1)
    _log(f"node ready in {time.monotonic() - started:.1f}s; KUBECONFIG={layout.kubeconfig}")
    info = running()
    if info is None:
        raise NodeError("the node stopped right after it was ready")
    return info


def stop() -> bool:
    """Stop the running node and restore the machine; False when no node was running."""
    state = _load_state()
    if state is None:
        return recover()
    _teardown(state)
    return True


def load(node: NodeInfo, image_list: Sequence[images.Image]) -> None:
    """Import images into the running node's containerd (what ``kind load`` does for kind)."""
    for image in image_list:
        cmd = ["nsenter", f"--target={node.inner_pid}", "--mount", "--net", "--",
               "ctr", "--address=/run/containerd/containerd.sock", "--namespace=k8s.io", "images", "import",
               str(image.archive)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise NodeError(f"importing {image.ref} failed: {done.stderr.strip()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.envtest node", description="A real one-node cluster.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("start", help="start a node that runs until `stop` (builds what is missing)")
    up.add_argument("--dir", type=Path, default=None, help="run folder (default: a temporary one)")
    up.add_argument("--sync-frequency", default=nc.DEFAULT_SYNC_FREQUENCY, help="kubelet's syncFrequency")
    up.add_argument(
        "--images", action="store_true", help="also build and load the project's and the example apps' images"
    )
    sub.add_parser("stop", help="stop the node and restore the machine's settings")
    sub.add_parser("status", help="print the running node's kubeconfig, or fail")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            preload = images.project(Path.cwd()) if args.images else ()
            info = start(args.dir, preload=preload, sync_frequency=args.sync_frequency, attached=False)
            print(f"export KUBECONFIG={info.kubeconfig}\nexport PATH={info.kubectl.parent}:$PATH")
            for image in preload:
                print(f"# loaded {image.ref}")
        elif args.command == "stop":
            print("stopped" if stop() else "no node was running")
        else:
            found = running()
            if found is None:
                print("no node is running", file=sys.stderr)
                return 1
            print(f"export KUBECONFIG={found.kubeconfig}")
    except (NodeError, assets.AssetError, images.ImageError, hostpkgs.HostError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def memory(info: NodeInfo) -> dict[str, float]:
    """Resident memory (MiB) of the node's own processes by name (Pods' processes, in PID namespaces of
    their own, are not counted)."""
    own = os.readlink(f"/proc/{info.inner_pid}/ns/pid")
    usage: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "ns" / "pid") != own:
                continue
            status = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            rss = int(status.get("VmRSS", "0 kB").split()[0]) / 1024
            name = status["Name"].strip()
            usage[name] = round(usage.get(name, 0.0) + rss, 1)
    return dict(sorted(usage.items(), key=lambda item: -item[1]))
