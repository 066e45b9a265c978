"""Processes for sidecar tests, each on loopback: ``tessera sidecar``, the echo app, and a real nginx."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from tessera.envtest import nginx
from tests import waiting
from tests.harness import free_port, stop_process
from tests.sidecar_kit import AUDIENCE, NAMESPACE, RULES


@dataclasses.dataclass
class Process:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        stop_process(self.process, timeout=10)


@dataclasses.dataclass
class Sidecar(Process):
    proxy_port: int | None = None


@dataclasses.dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int, method: str, target: str, headers: Mapping[str, str | list[str]] | None = None, body: bytes | None = None
) -> Answer:
    """One HTTP/1.1 request on a fresh connection; header values given as lists are sent repeatedly."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            for one in value if isinstance(value, list) else [value]:
                conn.putheader(name, one)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def ready(port: int) -> bool:
    with contextlib.suppress(OSError, http.client.HTTPException):
        return request(port, "GET", "/readyz").status == 200
    return False


def answering(port: int, path: str = "/healthz") -> bool:
    with contextlib.suppress(OSError, http.client.HTTPException):
        request(port, "GET", path)
        return True
    return False


def write_rules(folder: Path, rules: Mapping[str, Any] = RULES) -> Path:
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump(dict(rules)))
    return path


def start_sidecar(
    tmp: Path,
    bundle_dir: Path,
    rules_file: Path,
    upstream: int | None = None,
    wait_ready: bool = True,
    extra: tuple[str, ...] = (),
    namespace: str = NAMESPACE,
) -> Sidecar:
    port = free_port()
    proxy_port = free_port() if upstream is not None else None
    cmd = [
        sys.executable, "-m", "tessera.cli", "sidecar",
        "--bundle-dir", str(bundle_dir),
        "--namespace", namespace,
        "--audience", AUDIENCE,
        "--rules", str(rules_file),
        "--listen", f"127.0.0.1:{port}",
        "--reload-seconds", "0.2",
        *extra,
    ]  # fmt: skip
    if upstream is not None:
        cmd += ["--proxy-listen", f"127.0.0.1:{proxy_port}", "--upstream", f"http://127.0.0.1:{upstream}"]
    log = tmp / f"sidecar-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    sidecar = Sidecar(process, port, log, proxy_port)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the sidecar exited with {process.returncode}:\n{sidecar.logs()[-3000:]}")
        return ready(port) if wait_ready else answering(port)

    waiting.until(up, timeout=30, interval=0.02, what="the sidecar")
    if proxy_port is not None:
        waiting.until(lambda: answering(proxy_port, "/healthz"), timeout=30, interval=0.02, what="the proxy port")
    return sidecar


def start_echo(tmp: Path) -> Process:
    port = free_port()
    log = tmp / f"echo-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.apps.echo", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    echo = Process(process, port, log)
    waiting.until(lambda: answering(port, "/"), timeout=30, interval=0.02, what="the echo app")
    return echo


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
{server}
}}
"""


def start_nginx(tmp: Path, sidecar_port: int, app_port: int) -> Process:
    """nginx on a free port: auth_request to the sidecar, then the app (examples/nginx-auth-request.conf)."""
    port = free_port()
    template = (Path(__file__).parents[1] / "examples" / "nginx-auth-request.conf").read_text()
    server = (
        template.replace("listen 8080;", f"listen 127.0.0.1:{port};")
        .replace("127.0.0.1:8181", f"127.0.0.1:{sidecar_port}")
        .replace("127.0.0.1:3000", f"127.0.0.1:{app_port}")
    )
    conf = tmp / f"nginx-{port}.conf"
    conf.write_text(NGINX_CONF.format(tmp=tmp, server=server))
    log = tmp / f"nginx-{port}.out"
    binary = nginx.ensure()
    subprocess.run([str(binary), "-t", "-p", str(tmp), "-c", str(conf)], check=True, capture_output=True)
    with log.open("wb") as out:
        process = subprocess.Popen([str(binary), "-p", str(tmp), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    proxy = Process(process, port, tmp / "nginx-error.log")
    waiting.until(lambda: answering(port, "/healthz"), timeout=30, interval=0.02, what="nginx")
    return proxy


@contextlib.contextmanager
def running(*processes: Process) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            process.stop()


def wait_for_bundle(port: int, digest: str, timeout: float = 10.0) -> float:
    """Seconds until the sidecar reports the bundle with ``digest`` in use."""
    started = time.monotonic()

    def loaded() -> bool:
        bundle = request(port, "GET", "/readyz").json().get("bundle") or {}
        return bool(bundle.get("digest") == digest[:12])

    waiting.until(loaded, timeout=timeout, interval=0.02, what=f"bundle {digest[:12]}")
    return time.monotonic() - started
