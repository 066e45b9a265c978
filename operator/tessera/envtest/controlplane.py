"""A throwaway etcd + kube-apiserver (+ kube-controller-manager) on loopback: Tessera's envtest.

Like controller-runtime's envtest, tests and ``make run`` get a real API server with real RBAC,
admission and garbage collection instead of a mock, started in seconds from cached binaries
(see ``assets``). Certificates are made in-process with ``cryptography``; every child runs in its
own process group, dies with its parent (Linux ``PR_SET_PDEATHSIG``) and is stopped at exit, so a
crashed test run leaves no etcd or kube-apiserver behind.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import dataclasses
import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType

from tessera.envtest import assets as assets_module
from tessera.envtest import pki as certs
from tessera.envtest.assets import Assets

CONTEXT = "tessera-envtest"
SERVICE_CIDR = "10.0.0.0/24"
CONTROLLERS = ("garbage-collector-controller", "namespace-controller", "serviceaccount-controller")
POLL_INTERVAL = 0.1
STOP_GRACE = 5.0
LOG_TAIL_LINES = 40


class ControlPlaneError(RuntimeError):
    """The control plane could not be started (the message carries the relevant log's tail)."""


@dataclasses.dataclass(frozen=True)
class ControlPlaneInfo:
    """What a started control plane offers its callers."""

    kubeconfig: Path
    server: str
    ca_file: Path
    directory: Path
    kubectl: Path


def kubeconfig(server: str, ca_file: Path, cert: Path, key: Path, user: str) -> dict[str, object]:
    """A kubeconfig referring to PEM files by path; dumped as JSON, which is valid YAML."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": user}}],
        "current-context": CONTEXT,
        "preferences": {},
    }


def etcd_args(binary: Path, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [
        str(binary), f"--data-dir={data_dir}", f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=default={peer}",
        "--unsafe-no-fsync=true", f"--quota-backend-bytes={8 * 1024**3}", "--log-level=warn",
        "--heartbeat-interval=20", "--election-timeout=100",  # one member: elect itself in 0.1 s, not ~1 s
    ]  # fmt: skip


def apiserver_args(binary: Path, pki: certs.Pki, etcd_port: int, port: int, cert_dir: Path) -> list[str]:
    return [
        str(binary), f"--etcd-servers=http://127.0.0.1:{etcd_port}", f"--cert-dir={cert_dir}",
        f"--tls-cert-file={pki.serving_cert}", f"--tls-private-key-file={pki.serving_key}",
        f"--secure-port={port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--disable-admission-plugins=ServiceAccount",
        "--authorization-mode=RBAC", f"--service-account-issuer={certs.SERVICE_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}", f"--service-account-signing-key-file={pki.sa_key}",
        f"--client-ca-file={pki.client_ca}", "--allow-privileged=true",
    ]  # fmt: skip


def controller_manager_args(
    binary: Path, pki: certs.Pki, kubeconfig_file: Path, port: int, cert_dir: Path
) -> list[str]:
    return [
        str(binary), f"--kubeconfig={kubeconfig_file}", f"--controllers={','.join(CONTROLLERS)}",
        "--leader-elect=false", f"--secure-port={port}", "--bind-address=127.0.0.1", f"--cert-dir={cert_dir}",
        "--use-service-account-credentials=false", f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca}",
    ]  # fmt: skip


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that were free a moment ago (all bound at once, so never equal)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def child_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment with loopback excluded from any proxy."""
    env = dict(os.environ if base is None else base)
    for var in ("NO_PROXY", "no_proxy"):
        env[var] = ",".join(p for p in (env.get(var, ""), "127.0.0.1,localhost") if p)
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child get SIGKILL when this process dies (Linux, main thread only:
    the signal follows the forking *thread*, so a worker thread's exit would kill the control plane)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    prctl, parent = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@dataclasses.dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of the log, for error messages (the log itself is deleted with a temporary folder)."""
        with contextlib.suppress(OSError):
            text = "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
            return f"last {lines} lines of {self.log.name}:\n{text}"
        return f"(no {self.log.name})"


def _spawn(name: str, cmd: list[str], directory: Path) -> _Process:
    log = directory / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=child_env(),
            start_new_session=True, preexec_fn=_die_with_parent(), cwd=directory,
        )  # fmt: skip
    return _Process(name, popen, log)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _terminate(proc: _Process, grace: float = STOP_GRACE) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds (and sweep leftovers), then reap."""
    if proc.popen.poll() is None:
        _signal_group(proc.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=grace)
    _signal_group(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait()


def _wait_until(proc: _Process, ready: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll ``ready`` until true; fail fast when ``proc`` exits, fail at ``deadline``."""
    while True:
        code = proc.popen.poll()
        if code is not None:
            raise ControlPlaneError(f"{proc.name} exited with code {code} before {what}; {proc.tail()}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise ControlPlaneError(f"{proc.name}: no {what} before the timeout; {proc.tail()}")
        time.sleep(POLL_INTERVAL)


def http_get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes] | None:
    """GET ``path`` on a fresh connection; None when nothing answers (yet)."""
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def etcd_healthy(port: int) -> bool:
    got = http_get(http.client.HTTPConnection("127.0.0.1", port, timeout=1.0), "/health")
    return got is not None and got[0] == http.HTTPStatus.OK and b'"health":"true"' in got[1]


def https_ok(port: int, path: str, context: ssl.SSLContext) -> bool:
    got = http_get(http.client.HTTPSConnection("127.0.0.1", port, timeout=2.0, context=context), path)
    return got is not None and got[0] == http.HTTPStatus.OK


_RUNNING: set[ControlPlane] = set()  # stopped at exit


class ControlPlane:
    """etcd, kube-apiserver and optionally kube-controller-manager, started and stopped together."""

    def __init__(
        self,
        assets: Assets,
        *,
        directory: Path | None = None,
        with_controller_manager: bool = True,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        """``extra_apiserver_args`` are appended to kube-apiserver's command line (e.g.
        ``--authentication-config=<file>`` for a JWT authenticator in a test)."""
        self._assets = assets
        self._extra_apiserver_args = tuple(extra_apiserver_args)
        self._given_directory = directory
        self._with_controller_manager = with_controller_manager and assets.has_controller_manager
        self._lock = threading.RLock()
        self._processes: list[_Process] = []
        self._directory: Path | None = None
        self._client_ca: certs.KeyPair | None = None
        self._info: ControlPlaneInfo | None = None
        # kube-apiserver's command line, port and a client context for /readyz, to start it again
        self._apiserver: tuple[list[str], int, ssl.SSLContext] | None = None

    @property
    def info(self) -> ControlPlaneInfo:
        if self._info is None:
            raise ControlPlaneError("the control plane is not started")
        return self._info

    def start(self, timeout: float = 90.0) -> ControlPlaneInfo:
        """Start every process and return once the API server is ready (``/readyz``), or raise."""
        with self._lock:
            if self._info is not None:
                return self._info
            deadline = time.monotonic() + timeout
            _RUNNING.add(self)
            try:
                self._info = self._start(self._prepare_directory(), deadline)
            except BaseException:
                self.stop()
                raise
            return self._info

    def _prepare_directory(self) -> Path:
        if self._given_directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="tessera-envtest-"))
        else:
            self._directory = self._given_directory.resolve()
            self._directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self._directory / "etcd-data", ignore_errors=True)  # each start is a fresh cluster
        return self._directory

    def _start(self, directory: Path, deadline: float) -> ControlPlaneInfo:
        etcd_port, peer_port, api_port, cm_port = free_ports(4)
        pki, self._client_ca = certs.write_pki(directory / "pki")
        etcd = self._launch("etcd", etcd_args(self._assets.path("etcd"), directory / "etcd-data", etcd_port, peer_port))
        _wait_until(etcd, lambda: etcd_healthy(etcd_port), deadline, "etcd health")
        cmd = apiserver_args(
            self._assets.path("kube-apiserver"), pki, etcd_port, api_port, directory / "apiserver-certs"
        )
        cmd += self._extra_apiserver_args
        apiserver = self._launch("kube-apiserver", cmd)
        server = f"https://127.0.0.1:{api_port}"
        admin = directory / "kubeconfig"
        admin.write_text(
            json.dumps(kubeconfig(server, pki.ca, pki.admin_cert, pki.admin_key, certs.ADMIN_USER), indent=2)
        )
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        self._apiserver = (cmd, api_port, context)
        _wait_until(apiserver, lambda: https_ok(api_port, "/readyz", context), deadline, "/readyz")
        if self._with_controller_manager:
            self._start_controller_manager(pki, admin, cm_port, deadline)
        return ControlPlaneInfo(admin, server, pki.ca, directory, self._assets.path("kubectl"))

    def _start_controller_manager(self, pki: certs.Pki, admin: Path, port: int, deadline: float) -> None:
        binary = self._assets.path("kube-controller-manager")
        assert self._directory is not None
        cmd = controller_manager_args(binary, pki, admin, port, self._directory / "controller-manager-certs")
        proc = self._launch("kube-controller-manager", cmd)
        insecure = ssl.create_default_context()  # its serving cert is self-signed; only /healthz is read
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        _wait_until(proc, lambda: https_ok(port, "/healthz", insecure), deadline, "/healthz")

    def _launch(self, name: str, cmd: list[str]) -> _Process:
        assert self._directory is not None
        proc = _spawn(name, cmd, self._directory)
        self._processes.append(proc)
        return proc

    def exited(self) -> str | None:
        """The name and log tail of a process that has exited on its own, or None while all run."""
        for proc in self._processes:
            if proc.popen.poll() is not None:
                return f"{proc.name} exited with code {proc.popen.returncode}; {proc.tail()}"
        return None

    def stop(self) -> None:
        """Stop every process (newest first) and remove the temporary folder; safe to call twice."""
        with self._lock:
            processes, self._processes = self._processes, []
            for proc in reversed(processes):
                _terminate(proc)
            if self._directory is not None and self._given_directory is None:
                shutil.rmtree(self._directory, ignore_errors=True)
            self._directory, self._info, self._client_ca = None, None, None
            _RUNNING.discard(self)

    def stop_apiserver(self) -> None:
        """Stop kube-apiserver alone (an outage: clients get "connection refused"); etcd keeps the state."""
        with self._lock:
            for proc in [p for p in self._processes if p.name == "kube-apiserver"]:
                _terminate(proc)
                self._processes.remove(proc)

    def start_apiserver(self, timeout: float = 60.0) -> None:
        """Start kube-apiserver again, on the same port with the same arguments; return once it is ready."""
        with self._lock:
            if self._apiserver is None or self._info is None:
                raise ControlPlaneError("the control plane is not started")
            cmd, port, context = self._apiserver
            proc = self._launch("kube-apiserver", cmd)
            _wait_until(proc, lambda: https_ok(port, "/readyz", context), time.monotonic() + timeout, "/readyz")

    def kubeconfig_for(self, user: str, groups: list[str]) -> Path:
        """Write a kubeconfig authenticating as ``user`` in ``groups`` (client cert), e.g. for RBAC tests."""
        with self._lock:
            info, client_ca = self.info, self._client_ca
            assert client_ca is not None
            digest = hashlib.sha256("\0".join([user, *groups]).encode()).hexdigest()[:8]
            stem = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', user)}-{digest}"
            folder = info.directory / "users"
            folder.mkdir(exist_ok=True)
            cert, key = certs.write_pair(folder, stem, certs.issue(client_ca, user, organizations=groups))
            path = folder / f"{stem}.kubeconfig"
            path.write_text(json.dumps(kubeconfig(info.server, info.ca_file, cert, key, user), indent=2))
            return path

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for plane in list(_RUNNING):
        plane.stop()


def serve(directory: Path, *, with_controller_manager: bool = True, timeout: float = 90.0) -> int:
    """Run a control plane keeping its files (``DIR/kubeconfig``) in ``directory`` until SIGINT/SIGTERM."""
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        found = assets_module.ensure()
        with ControlPlane(found, directory=directory, with_controller_manager=with_controller_manager) as plane:
            started = time.monotonic()
            info = plane.start(timeout)
            print(f"control plane ready in {time.monotonic() - started:.1f}s at {info.server}", file=sys.stderr)
            print(f"kubeconfig: {info.kubeconfig}\nexport KUBECONFIG={shlex.quote(str(info.kubeconfig))}", flush=True)
            while not stopping:
                crashed = plane.exited()
                if crashed is not None:
                    raise ControlPlaneError(crashed)
                time.sleep(0.2)
    except (ControlPlaneError, assets_module.AssetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.envtest", description="Tessera's local control plane.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run etcd + kube-apiserver (+ controller manager) until interrupted")
    run.add_argument("--dir", type=Path, required=True, help="folder kept between runs; kubeconfig at DIR/kubeconfig")
    run.add_argument("--no-controller-manager", action="store_true", help="skip kube-controller-manager")
    run.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for readiness")
    args = parser.parse_args(argv)
    return serve(args.dir, with_controller_manager=not args.no_controller_manager, timeout=args.timeout)
