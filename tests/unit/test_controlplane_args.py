"""Local control plane helpers without Kubernetes binaries: certificates, kubeconfigs, flags, ports, processes."""

from __future__ import annotations

import ipaddress
import json
import signal
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tessera.envtest import controlplane as cp
from tessera.envtest import pki as certs
from tests import waiting


def _flags(args: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in args[1:])


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_pki_chains_and_names(tmp_path: Path) -> None:
    pki, client_ca = certs.write_pki(tmp_path)
    serving, admin = _load(pki.serving_cert), _load(pki.admin_cert)
    serving.verify_directly_issued_by(_load(pki.ca))
    admin.verify_directly_issued_by(_load(pki.client_ca))
    assert client_ca.cert == _load(pki.client_ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) >= {"localhost", "kubernetes.default.svc"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address(ip) for ip in certs.IP_SANS}
    assert admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    usage = admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert pki.admin_key.stat().st_mode & 0o077 == 0


def test_pki_files_load_in_ssl(tmp_path: Path) -> None:
    pki, _ = certs.write_pki(tmp_path)
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(pki.serving_cert), str(pki.serving_key))


def test_issue_user_with_groups(tmp_path: Path) -> None:
    ca = certs.new_ca("test-ca")
    pair = certs.issue(ca, "alice", organizations=["devs", "ops"])
    assert pair.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    assert [a.value for a in pair.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["devs", "ops"]
    cert, key = certs.write_pair(tmp_path, "alice", pair)
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" in key.read_text()


def test_kubeconfig_is_json_yaml_with_file_paths(tmp_path: Path) -> None:
    config = cp.kubeconfig("https://127.0.0.1:6443", tmp_path / "ca.crt", tmp_path / "a.crt", tmp_path / "a.key", "bob")
    parsed = json.loads(json.dumps(config))
    assert parsed["current-context"] == cp.CONTEXT
    assert parsed["clusters"][0]["cluster"] == {
        "server": "https://127.0.0.1:6443",
        "certificate-authority": str(tmp_path / "ca.crt"),
    }
    assert parsed["users"][0] == {
        "name": "bob",
        "user": {"client-certificate": str(tmp_path / "a.crt"), "client-key": str(tmp_path / "a.key")},
    }


def test_etcd_args_loopback_only(tmp_path: Path) -> None:
    flags = _flags(cp.etcd_args(tmp_path / "etcd", tmp_path / "data", 2379, 2380))
    assert flags["listen-client-urls"] == flags["advertise-client-urls"] == "http://127.0.0.1:2379"
    assert flags["initial-cluster"] == "default=http://127.0.0.1:2380"
    assert flags["unsafe-no-fsync"] == "true"
    assert flags["data-dir"] == str(tmp_path / "data")


def test_apiserver_and_controller_manager_args(tmp_path: Path) -> None:
    pki, _ = certs.write_pki(tmp_path)
    api = _flags(cp.apiserver_args(tmp_path / "kube-apiserver", pki, 2379, 6443, tmp_path / "certs"))
    assert api["etcd-servers"] == "http://127.0.0.1:2379"
    assert api["secure-port"] == "6443"
    assert api["bind-address"] == "127.0.0.1"
    assert api["authorization-mode"] == "RBAC"
    assert api["client-ca-file"] == str(pki.client_ca)
    assert api["service-account-key-file"] == str(pki.sa_pub)
    kcm = _flags(cp.controller_manager_args(tmp_path / "kcm", pki, tmp_path / "kubeconfig", 10257, tmp_path / "c"))
    assert kcm["controllers"].split(",") == list(cp.CONTROLLERS)
    assert kcm["leader-elect"] == "false"
    assert kcm["root-ca-file"] == str(pki.ca)


def test_free_ports_are_distinct() -> None:
    ports = cp.free_ports(4)
    assert len(set(ports)) == 4
    assert all(0 < port < 65536 for port in ports)


def test_child_env_excludes_loopback_from_proxy() -> None:
    env = cp.child_env({"NO_PROXY": "example.com", "HTTPS_PROXY": "http://proxy:3128"})
    assert env["NO_PROXY"] == "example.com,127.0.0.1,localhost"
    assert env["no_proxy"] == "127.0.0.1,localhost"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"


def test_wait_fails_fast_with_log_tail(tmp_path: Path) -> None:
    proc = cp._spawn("boom", ["/bin/sh", "-c", "echo starting; echo boom >&2; exit 3"], tmp_path)
    with pytest.raises(
        cp.ControlPlaneError, match=r"(?s)boom exited with code 3 before readiness.*boom.log:\nstarting\nboom"
    ):
        cp._wait_until(proc, lambda: False, time.monotonic() + 30, "readiness")


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan is reaped by init only eventually)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_terminate_kills_the_whole_process_group(tmp_path: Path) -> None:
    script = "trap '' TERM; sleep 60 & echo $! > child.tmp; mv child.tmp child.pid; wait"
    proc = cp._spawn("tree", ["/bin/sh", "-c", script], tmp_path)
    waiting.until((tmp_path / "child.pid").exists, timeout=10, what="the grandchild to start")
    child = int((tmp_path / "child.pid").read_text())
    assert _running(child)
    cp._terminate(proc, grace=0.2)
    assert proc.popen.returncode == -signal.SIGKILL
    waiting.until(lambda: not _running(child), timeout=10, what="the grandchild to die")
