"""The node's first process: inside its own PID, mount and network namespaces, it runs the node.

``tessera.envtest.node`` starts it under ``unshare`` with a prepared run folder. As PID 1 of the
node's PID namespace, its exit (even SIGKILL) makes the kernel kill every node process and every
container, and with them the namespaces go: their mounts, network devices, iptables rules and
namespaced sysctls never touch the machine. Here it:

1. mounts a private ``/run`` and binds the run folder's parts over ``/var/lib`` and ``/var/log``,
   so kubelet, containerd and CNI use their usual paths;
2. builds the network: loopback, the Pod bridge, the uplink the host moved in, a route for the
   Service range, and the containment rule (nothing from a Pod is forwarded anywhere but the bridge);
3. starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (and imports
   the images), kubelet, kube-proxy and CoreDNS, each once the previous one answers;
4. writes ``status.json`` (phase, timings, or the failure with a log tail) and watches them; a
   process that exits on its own fails the node. SIGTERM stops them newest first.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from tessera.envtest import controlplane as cp
from tessera.envtest import nodeconfig as nc
from tessera.envtest import pki as certs

START_TIMEOUT = 240.0
UPLINK_TIMEOUT = 30.0


class NodeFailed(RuntimeError):
    """A node process did not come up; the message names it and carries its log tail."""


def sh(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NodeFailed(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value)


def http_ok(port: int, path: str) -> bool:
    import http.client

    got = cp.http_get(http.client.HTTPConnection("127.0.0.1", port, timeout=2.0), path)
    return got is not None and got[0] == 200


def insecure_https_ok(port: int, path: str) -> bool:
    context = ssl.create_default_context()  # self-signed serving certs; only health is read
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return cp.https_ok(port, path, context)


class Supervisor:
    def __init__(self, layout: nc.Layout) -> None:
        self.layout = layout
        self.logs = layout.directory / "logs"
        self.processes: list[cp._Process] = []
        self.stopping: list[int] = []
        self.started = time.monotonic()
        self.deadline = self.started + START_TIMEOUT
        self.timings: dict[str, float] = {}

    # --- status ----------------------------------------------------------------------------------

    def status(self, phase: str, message: str = "") -> None:
        data = {"phase": phase, "message": message, "timings": self.timings, "pid": os.getpid()}
        staging = self.layout.status_file.with_suffix(".partial")
        staging.write_text(json.dumps(data, indent=2))
        os.replace(staging, self.layout.status_file)

    def mark(self, what: str) -> None:
        self.timings[what] = round(time.monotonic() - self.started, 2)
        print(f"[node] {what} after {self.timings[what]:.1f}s", flush=True)

    # --- the namespaces' contents ------------------------------------------------------------------

    def mounts(self) -> None:
        sh("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run")
        for source, target in ((self.layout.var_lib, "/var/lib"), (self.layout.var_log, "/var/log")):
            sh("mount", "--bind", str(source), target)

    def network(self) -> None:
        uplink = self.layout.uplink
        sh("ip", "link", "set", "lo", "up")
        sh("ip", "link", "add", nc.BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{nc.NODE_IP}/{nc.POD_CIDR.split('/')[1]}", "dev", nc.BRIDGE)
        sh("ip", "link", "set", nc.BRIDGE, "up")
        deadline = time.monotonic() + UPLINK_TIMEOUT
        while subprocess.run(["ip", "link", "show", nc.UPLINK], capture_output=True, check=False).returncode != 0:
            if time.monotonic() > deadline or self.stopping:
                raise NodeFailed(f"the host did not hand over the uplink {nc.UPLINK}")
            time.sleep(0.05)
        sh("ip", "addr", "add", f"{uplink.node_ip}/{uplink.prefix}", "dev", nc.UPLINK)
        sh("ip", "link", "set", nc.UPLINK, "up")
        sh("ip", "route", "add", nc.SERVICE_CIDR, "dev", nc.BRIDGE)  # Service addresses reach kube-proxy's rules
        write_sysctl("net.ipv4.ip_forward", "1")  # this namespace's own setting
        write_sysctl("net.bridge.bridge-nf-call-iptables", "1")  # likewise (per namespace since Linux 5.3)
        # Containment: whatever a Pod sends out of the bridge toward anything but another Pod is dropped.
        sh("iptables", "-t", "mangle", "-A", "FORWARD", "-i", nc.BRIDGE, "!", "-o", nc.BRIDGE, "-j", "DROP")

    # --- processes -------------------------------------------------------------------------------

    def launch(self, name: str, cmd: list[str]) -> cp._Process:
        proc = cp._spawn(name, cmd, self.logs)
        self.processes.append(proc)
        return proc

    def wait(self, proc: cp._Process, ready: Callable[[], bool], what: str) -> None:
        cp._wait_until(proc, lambda: bool(self.stopping) or ready(), self.deadline, what)
        if self.stopping:
            raise NodeFailed("stopped while starting")
        self.mark(f"{proc.name} ready")

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.layout.binary("kubectl")), f"--kubeconfig={self.layout.inner_kubeconfig}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)

    def control_plane(self) -> None:
        lay = self.layout
        etcd = self.launch(
            "etcd", cp.etcd_args(lay.binary("etcd"), lay.var_lib / "etcd", nc.ETCD_PORT, nc.ETCD_PEER_PORT)
        )
        self.wait(etcd, lambda: cp.etcd_healthy(nc.ETCD_PORT), "etcd health")
        pki = certs.Pki(
            lay.pki / "ca.crt", lay.pki / "apiserver.crt", lay.pki / "apiserver.key", lay.pki / "client-ca.crt",
            lay.pki / "admin.crt", lay.pki / "admin.key", lay.pki / "sa.key", lay.pki / "sa.pub",
        )  # fmt: skip
        base = cp.apiserver_args(
            lay.binary("kube-apiserver"), pki, nc.ETCD_PORT, nc.API_PORT, lay.directory / "apiserver-certs"
        )
        apiserver = self.launch("kube-apiserver", nc.apiserver_args(base, lay))
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        self.wait(apiserver, lambda: cp.https_ok(nc.API_PORT, "/readyz", context), "/readyz")
        manager = self.launch(
            "kube-controller-manager", nc.controller_manager_args(lay, lay.binary("kube-controller-manager"))
        )
        scheduler = self.launch("kube-scheduler", nc.scheduler_args(lay, lay.binary("kube-scheduler")))
        self.wait(manager, lambda: insecure_https_ok(10257, "/healthz"), "/healthz")
        self.wait(scheduler, lambda: insecure_https_ok(10259, "/healthz"), "/healthz")

    def runtime(self) -> None:
        lay = self.layout
        containerd = self.launch("containerd", ["containerd", f"--config={lay.config / 'containerd.toml'}"])
        ctr = ["ctr", f"--address={lay.containerd_socket}", "--namespace=k8s.io"]

        def answers() -> bool:
            return subprocess.run([*ctr, "version"], capture_output=True, check=False).returncode == 0

        self.wait(containerd, answers, "its socket")
        for archive in lay.image_archives:
            sh(*ctr, "images", "import", str(archive))
        self.mark("images imported")

    def cgroups(self) -> None:
        """kubelet wants its cgroup root to exist in every hierarchy (the host removes it at stop)."""
        for top in Path("/sys/fs/cgroup").iterdir():
            if not top.is_dir() or top.is_symlink():
                continue
            root = top / nc.CGROUP_ROOT
            root.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset starts empty: inherit the parent's
                if (top / name).exists() and not (root / name).read_text().strip():
                    (root / name).write_text((top / name).read_text())

    def node_agents(self) -> None:
        lay = self.layout
        self.cgroups()
        kubelet = self.launch("kubelet", nc.kubelet_args(lay, lay.binary("kubelet")))
        proxy = self.launch("kube-proxy", [str(lay.binary("kube-proxy")), f"--config={lay.config / 'kube-proxy.json'}"])
        dns = self.launch("coredns", [str(lay.binary("coredns")), "-conf", str(lay.config / "Corefile")])
        self.wait(kubelet, lambda: http_ok(nc.KUBELET_HEALTHZ_PORT, "/healthz"), "/healthz")
        self.wait(proxy, lambda: http_ok(nc.KUBE_PROXY_HEALTHZ_PORT, "/healthz"), "/healthz")
        self.wait(dns, lambda: http_ok(nc.DNS_READY_PORT, "/ready"), "/ready")

        def node_ready() -> bool:
            jsonpath = '{.status.conditions[?(@.type=="Ready")].status}'
            return self.kubectl("get", "node", nc.NODE_NAME, "-o", f"jsonpath={jsonpath}").stdout == "True"

        def default_account() -> bool:  # Pods in `default` can be admitted
            return self.kubectl("get", "serviceaccount", "default", "-n", "default").returncode == 0

        cp._wait_until(kubelet, lambda: node_ready() and default_account(), self.deadline, "node Ready")
        self.mark("node Ready")

    # --- lifetime --------------------------------------------------------------------------------

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping.append(signum)

    def reap_orphans(self) -> None:
        """As PID 1, collect orphans that were re-parented here (never our own children: their
        Popen objects collect those)."""
        ours = {p.popen.pid for p in self.processes}
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid in ours:
                return
            os.waitpid(info.si_pid, 0)

    def watch(self) -> None:
        while not self.stopping:
            crashed = next((p for p in self.processes if p.popen.poll() is not None), None)
            if crashed is not None:
                raise NodeFailed(f"{crashed.name} exited with code {crashed.popen.returncode}; {crashed.tail()}")
            self.reap_orphans()
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            cp._terminate(proc)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.status("starting")
        try:
            self.mounts()
            self.network()
            self.mark("network")
            self.control_plane()
            self.runtime()
            self.node_agents()
            self.status("ready")
            self.watch()
            self.status("stopping")
            return 0
        except (NodeFailed, cp.ControlPlaneError, OSError, subprocess.SubprocessError) as exc:
            print(f"[node] failed: {exc}", file=sys.stderr, flush=True)
            self.status("failed", str(exc))
            return 1
        finally:
            self.stop()


def main(argv: list[str]) -> int:
    layout = nc.Layout.from_json(Path(argv[0]).read_text())
    with contextlib.suppress(KeyboardInterrupt):
        return Supervisor(layout).run()
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
