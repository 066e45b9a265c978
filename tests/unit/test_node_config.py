"""The real node's configuration as pure functions: what kubelet, the API server, containerd, CNI and
CoreDNS are given, the uplink's address choice, and the image build's cache key and context."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from tessera.envtest import assets, images, node
from tessera.envtest import controlplane as cp
from tessera.envtest import nodeconfig as nc
from tessera.envtest import pki as certs

ROOT = Path(__file__).resolve().parents[2]


def layout(tmp_path: Path) -> nc.Layout:
    return nc.Layout(
        directory=tmp_path,
        control_plane=tmp_path / "cp",
        node_binaries=tmp_path / "node",
        uplink=nc.Uplink("172.30.255.4/30"),
        pause_image="localhost/tessera-pause:0123456789abcdef",
        image_archives=(tmp_path / "pause.tar",),
    )


def test_the_layout_survives_its_json(tmp_path: Path) -> None:
    original = layout(tmp_path)
    assert nc.Layout.from_json(original.to_json()) == original
    assert (original.uplink.host_ip, original.uplink.node_ip, original.uplink.prefix) == (
        "172.30.255.5",
        "172.30.255.6",
        30,
    )


def test_the_uplink_avoids_every_network_the_machine_has() -> None:
    used = ["192.0.2.0/24", "172.30.255.0/30", "172.30.255.5/32", "10.0.0.0/8", "0.0.0.0/0"]
    chosen = node.choose_uplink(used)
    assert chosen.network == "172.30.255.8/30"
    assert not any(ipaddress.ip_network(chosen.network).overlaps(ipaddress.ip_network(n)) for n in used[:4])
    with pytest.raises(node.NodeError, match="no free /30"):
        node.choose_uplink(["172.30.255.0/24"])


def test_kubelet_keeps_its_defaults_but_what_this_machine_needs(tmp_path: Path) -> None:
    config = nc.kubelet_config(layout(tmp_path), tmp_path / "client-ca.crt")
    assert config["syncFrequency"] == "1m0s"  # kubelet's own default: the suite measures what users get
    assert config["cgroupRoot"] == f"/{nc.CGROUP_ROOT}" and config["cgroupDriver"] == "cgroupfs"
    assert config["clusterDNS"] == [nc.NODE_IP] and config["resolvConf"].endswith("resolv.conf")
    assert config["imageGCHighThresholdPercent"] == 100  # images cannot be pulled again here
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"


def test_the_api_server_arguments_are_the_control_planes_with_the_node_flags_replaced(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    pki = certs.Pki(*(tmp_path / n for n in ("ca", "crt", "key", "client-ca", "admin", "admin-key", "sa", "sa.pub")))
    base = cp.apiserver_args(tmp_path / "kube-apiserver", pki, nc.ETCD_PORT, nc.API_PORT, tmp_path / "certs")
    args = nc.apiserver_args(base, lay)
    flags = [a.split("=", 1)[0] for a in args[1:]]
    assert len(flags) == len(set(flags)), "a flag given twice"
    assert "--bind-address=0.0.0.0" in args and f"--advertise-address={nc.NODE_IP}" in args
    assert "--authorization-mode=Node,RBAC" in args
    assert not [a for a in args if a.startswith("--disable-admission-plugins")]  # ServiceAccount admission is on
    assert f"--service-cluster-ip-range={nc.SERVICE_CIDR}" in args


def test_containerd_and_cni_use_the_nodes_own_paths_and_images(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    toml = nc.containerd_toml(lay)
    assert f'sandbox_image = "{lay.pause_image}"' in toml and "restrict_oom_score_adj = true" in toml
    assert '"io.containerd.internal.v1.opt"' in toml  # disabled: it would write to the machine's /opt
    [bridge] = nc.cni_conflist()["plugins"]
    assert bridge["bridge"] == nc.BRIDGE and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": nc.POD_CIDR, "gateway": nc.NODE_IP}]]


def test_coredns_serves_cluster_names_only(tmp_path: Path) -> None:
    corefile = nc.corefile(layout(tmp_path))
    assert "forward" not in corefile and f"bind {nc.NODE_IP}" in corefile
    source = assets.coredns_main()
    assert source.index("plugin/bind") < source.index("plugin/kubernetes")
    assert '"bind", "ready", "health", "errors", "log", "cache", "kubernetes"' in source


def test_the_image_cache_key_covers_exactly_the_build_context() -> None:
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    assert set(images.CONTEXT) == allowed | {"Dockerfile", ".dockerignore"}


def test_the_image_cache_key_changes_with_any_input(tmp_path: Path) -> None:
    (tmp_path / "operator").mkdir()
    (tmp_path / "operator" / "a.py").write_text("one")
    (tmp_path / "operator" / "__pycache__").mkdir()
    first = images.tree_digest(tmp_path, ("operator",), "base:1")
    (tmp_path / "operator" / "__pycache__" / "a.pyc").write_bytes(b"ignored")
    assert images.tree_digest(tmp_path, ("operator",), "base:1") == first
    assert images.tree_digest(tmp_path, ("operator",), "base:2") != first
    (tmp_path / "operator" / "a.py").write_text("two")
    assert images.tree_digest(tmp_path, ("operator",), "base:1") != first


def test_the_wheelhouse_key_follows_the_lock() -> None:
    lock = (ROOT / images.LOCK_FILE).read_text()
    assert "--hash=sha256:" in lock and "\nsetuptools==" in lock  # the Dockerfile builds offline with it
    dev_pins = {
        line.split(" ")[0] for line in (ROOT / "requirements-dev.lock").read_text().splitlines() if "==" in line
    }
    pins = {line.split(" ")[0] for line in lock.splitlines() if "==" in line}
    assert pins <= dev_pins, f"pinned differently for the image: {sorted(pins - dev_pins)}"


def test_node_json_is_what_the_supervisor_reads(tmp_path: Path) -> None:
    lay = layout(tmp_path)
    data = json.loads(lay.to_json())
    assert data["uplink"] == "172.30.255.4/30" and data["sync_frequency"] == nc.DEFAULT_SYNC_FREQUENCY
