"""What a real node's processes are started with: addresses, configuration files and arguments.

Pure functions of a :class:`Layout` (where things are) so a unit test can read them; the node
supervisor (``nodeinit``) writes and runs them. Everything runs in the node's own network namespace,
so the in-node ports are fixed (they cannot collide with anything on the machine) and the addresses
below exist only inside it; the host reaches the API server through one veth pair.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any

NODE_NAME = "tessera-node"
BRIDGE = "tessera0"
UPLINK = "uplink0"  # the node's end of the veth pair to the host
POD_CIDR = "10.244.0.0/24"
NODE_IP = "10.244.0.1"  # the bridge: pods' gateway, the API server's advertised address, the DNS server
SERVICE_CIDR = "10.0.0.0/24"  # the same range as the API-only control plane (10.0.0.1 is in its cert)
CLUSTER_DOMAIN = "cluster.local"
API_PORT = 6443
ETCD_PORT, ETCD_PEER_PORT = 2379, 2380
DNS_READY_PORT, DNS_HEALTH_PORT = 8181, 8180
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
CGROUP_ROOT = "tessera-node"  # kubelet puts every Pod under /<this>/kubepods in each cgroup hierarchy
DEFAULT_SYNC_FREQUENCY = "1m0s"  # kubelet's own default; how often mounted ConfigMaps/Secrets refresh


@dataclasses.dataclass(frozen=True)
class Uplink:
    """The /30 joining the host (``.1``) and the node (``.2``)."""

    network: str

    @property
    def host_ip(self) -> str:
        return str(ipaddress.ip_network(self.network)[1])

    @property
    def node_ip(self) -> str:
        return str(ipaddress.ip_network(self.network)[2])

    @property
    def prefix(self) -> int:
        return ipaddress.ip_network(self.network).prefixlen


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a node's files are and what it runs; written by the host as ``node.json``."""

    directory: Path  # the run's folder; /var/lib and /var/log inside the node are bind mounts of its parts
    control_plane: Path  # kube-apiserver, kube-controller-manager, kubectl, etcd
    node_binaries: Path  # kubelet, kube-scheduler, kube-proxy, coredns
    uplink: Uplink
    pause_image: str
    image_archives: tuple[Path, ...]
    sync_frequency: str = DEFAULT_SYNC_FREQUENCY

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["uplink"] = self.uplink.network
        return json.dumps(data, default=str, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Layout:
        data = json.loads(text)
        return cls(
            directory=Path(data["directory"]),
            control_plane=Path(data["control_plane"]),
            node_binaries=Path(data["node_binaries"]),
            uplink=Uplink(data["uplink"]),
            pause_image=data["pause_image"],
            image_archives=tuple(Path(p) for p in data["image_archives"]),
            sync_frequency=data["sync_frequency"],
        )

    # Folders of the run (host paths; /var/lib and /var/log are these inside the node).
    @property
    def var_lib(self) -> Path:
        return self.directory / "var-lib"

    @property
    def var_log(self) -> Path:
        return self.directory / "var-log"

    @property
    def config(self) -> Path:
        return self.directory / "config"

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig for the host (through the uplink)."""
        return self.directory / "kubeconfig"

    @property
    def inner_kubeconfig(self) -> Path:
        """The admin's kubeconfig for the node's own processes (loopback)."""
        return self.config / "admin.kubeconfig"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.config / "kubelet.kubeconfig"

    @property
    def status_file(self) -> Path:
        return self.directory / "status.json"

    @property
    def containerd_socket(self) -> str:
        return "/run/containerd/containerd.sock"

    def binary(self, name: str) -> Path:
        folder = self.node_binaries if (self.node_binaries / name).is_file() else self.control_plane
        return folder / name


def containerd_toml(layout: Layout) -> str:
    """containerd 1.6's CRI: runc with cgroupfs, the local pause image, our CNI folder.
    ``restrict_oom_score_adj``: root here lacks CAP_SYS_RESOURCE, and runc fails every Pod when it
    is asked to lower ``oom_score_adj`` (the sandbox asks for -998). The ``opt`` plugin is off so
    nothing is written to the machine's /opt."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{layout.containerd_socket}"

[{cri}]
  sandbox_image = "{layout.pause_image}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{layout.config / "cni"}"
"""


def cni_conflist() -> dict[str, Any]:
    """One bridge, no masquerade (nothing leaves the node), a default route through the bridge so
    Service addresses reach kube-proxy's rules."""
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "/var/lib/cni/networks",
    }
    bridge = {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True, "ipam": ipam}
    return {"cniVersion": "1.0.0", "name": "tessera", "plugins": [bridge]}


def kubelet_config(layout: Layout, client_ca: Path) -> dict[str, Any]:
    """kubelet's defaults, except what this machine needs: cgroupfs (no systemd), no swap check,
    no image garbage collection (an image removed here cannot be pulled again), no host DNS
    servers in Pods (nothing may leave), and our own cgroup root (removed whole at stop)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": KUBELET_HEALTHZ_PORT,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(client_ca)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "failSwapOn": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "resolvConf": str(layout.config / "resolv.conf"),
        "serializeImagePulls": False,
        "syncFrequency": layout.sync_frequency,
    }


def kube_proxy_config(layout: Layout) -> dict[str, Any]:
    """iptables mode inside the node's namespace; conntrack limits left as the kernel has them."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(layout.inner_kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "healthzBindAddress": f"127.0.0.1:{KUBE_PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def corefile(layout: Layout) -> str:
    """Cluster names only: no ``forward``, so a name outside the cluster is never asked elsewhere."""
    return f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{DNS_HEALTH_PORT}
    ready 127.0.0.1:{DNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {layout.inner_kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
}}
"""


def apiserver_extra_args(layout: Layout) -> list[str]:
    """What a real node adds to the API-only control plane's arguments (``controlplane.apiserver_args``):
    listen beyond loopback inside the node, advertise the bridge address (the ``kubernetes`` Service's
    endpoint for Pods), admit ServiceAccounts, authorise kubelets by node, and reach them."""
    pki = layout.pki
    return [
        "--bind-address=0.0.0.0",
        f"--advertise-address={NODE_IP}",
        "--enable-admission-plugins=NodeRestriction",
        "--authorization-mode=Node,RBAC",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        "--kubelet-preferred-address-types=InternalIP",
    ]


REPLACED_APISERVER_FLAGS = (
    "--bind-address",
    "--advertise-address",
    "--disable-admission-plugins",
    "--authorization-mode",
)


def apiserver_args(base: list[str], layout: Layout) -> list[str]:
    """``base`` (the API-only arguments) with the flags a node changes replaced."""
    kept = [a for a in base if not a.startswith(REPLACED_APISERVER_FLAGS)]
    return [*kept, *apiserver_extra_args(layout)]


def controller_manager_args(layout: Layout, binary: Path) -> list[str]:
    """Every default controller (Deployments, ReplicaSets, endpoints, the root CA ConfigMap that
    projected ServiceAccount tokens need, garbage collection, node lifecycle, PDBs)."""
    pki = layout.pki
    return [
        str(binary), f"--kubeconfig={layout.inner_kubeconfig}", "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--cert-dir={layout.directory / 'controller-manager-certs'}",
        "--use-service-account-credentials=false", f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}", f"--cluster-cidr={POD_CIDR}", "--allocate-node-cidrs=false",
    ]  # fmt: skip


def scheduler_args(layout: Layout, binary: Path) -> list[str]:
    return [
        str(binary), f"--kubeconfig={layout.inner_kubeconfig}", "--leader-elect=false",
        "--bind-address=127.0.0.1", f"--authentication-kubeconfig={layout.inner_kubeconfig}",
        f"--authorization-kubeconfig={layout.inner_kubeconfig}",
    ]  # fmt: skip


def kubelet_args(layout: Layout, binary: Path) -> list[str]:
    return [
        str(binary), f"--config={layout.config / 'kubelet.json'}", f"--kubeconfig={layout.kubelet_kubeconfig}",
        f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}",
    ]  # fmt: skip
