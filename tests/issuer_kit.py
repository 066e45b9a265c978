"""The pieces issuer tests, the chart test and the benchmark share: a TLS pair for loopback, the
issuer service started as users start it (``tessera issuer`` in a subprocess), requests to it over
real HTTPS, and a control plane whose API server trusts the issuer as a JWT authenticator.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import json
import ssl
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import kubernetes

from tessera.envtest import assets, controlplane, pki
from tests import harness, waiting

KUBE_AUDIENCE = "kubernetes"
USERNAME_PREFIX = "tessera:"


@dataclasses.dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def tls_files(folder: Path, name: str = "issuer") -> Tls:
    """A CA and a serving pair for 127.0.0.1 and localhost."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = pki.new_ca(f"{name} test CA")
    ca_cert, _ = pki.write_pair(folder, f"{name}-ca", ca)
    cert, key = pki.write_pair(folder, name, pki.issue(ca, name, server=True))
    return Tls(ca_cert, cert, key)


@dataclasses.dataclass
class Issuer:
    url: str
    port: int
    tls: Tls
    log_path: Path
    process: subprocess.Popen[bytes]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30, context=self.tls.context())
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def get_json(self, path: str) -> Any:
        status, _, body = self.request("GET", path)
        assert status == 200, (status, body)
        return json.loads(body)

    def token(self, form: Sequence[tuple[str, str]] | dict[str, str]) -> tuple[int, dict[str, Any]]:
        """POST a form to the token endpoint; (status, JSON answer)."""
        body = urllib.parse.urlencode(list(form.items()) if isinstance(form, dict) else list(form)).encode()
        status, _, raw = self.request("POST", "/token", body, {"Content-Type": "application/x-www-form-urlencoded"})
        return status, json.loads(raw)


def issuer_env(
    cluster: harness.Cluster, namespace: str, url: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    return {
        **cluster.env(),
        "TESSERA_NAMESPACE": namespace,
        "TESSERA_ISSUER": url,
        "TESSERA_CLOCK_LEEWAY_SECONDS": "5",
        **(extra or {}),
    }


def start_issuer(
    cluster: harness.Cluster,
    namespace: str,
    port: int,
    tls: Tls,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    kubeconfig: Path | None = None,
    prefix: Sequence[str] = (),
) -> Issuer:
    """``tessera issuer`` in a subprocess, ready once ``/readyz`` answers 200 over HTTPS. ``prefix`` goes
    before the command (the benchmark pins it to one core with ``taskset``)."""
    url = f"https://127.0.0.1:{port}"
    env = issuer_env(cluster, namespace, url, extra_env)
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    cmd = [
        *prefix, sys.executable, "-m", "tessera.cli", "issuer", "--listen", f"127.0.0.1:{port}",
        "--tls-cert", str(tls.cert), "--tls-key", str(tls.key),
    ]  # fmt: skip
    log = log_path.open("wb")
    process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    issuer = Issuer(url, port, tls, log_path, process)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the issuer exited with {process.returncode}:\n{issuer.logs()[-4000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            return issuer.request("GET", "/readyz")[0] == 200
        return False

    waiting.until(ready, timeout=60, what="the issuer's /readyz")
    return issuer


def authentication_config(issuer_url: str, ca_pem: str) -> dict[str, Any]:
    """kube-apiserver's AuthenticationConfiguration trusting the issuer through its discovery URL."""
    return {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AuthenticationConfiguration",
        "jwt": [
            {
                "issuer": {"url": issuer_url, "audiences": [KUBE_AUDIENCE], "certificateAuthority": ca_pem},
                "claimMappings": {"username": {"claim": "sub", "prefix": USERNAME_PREFIX}},
            }
        ],
    }


@contextlib.contextmanager
def relying_cluster(
    folder: Path, issuer_url: str, tls: Tls
) -> Iterator[tuple[harness.Cluster, controlplane.ControlPlane]]:
    """A control plane of its own whose API server accepts the issuer's tokens (CRDs installed)."""
    config = folder / "authentication-config.json"
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps(authentication_config(issuer_url, tls.ca.read_text())))
    plane = controlplane.ControlPlane(
        assets.ensure(),
        directory=folder / "control-plane",
        with_controller_manager=False,
        extra_apiserver_args=[f"--authentication-config={config}"],
    )
    with plane:
        info = plane.start()
        api = harness.client_for(info.kubeconfig)
        cluster = harness.Cluster(
            info.kubeconfig,
            str(info.kubectl),
            kubernetes.client.CoreV1Api(api),
            kubernetes.client.CustomObjectsApi(api),
            api,
            garbage_collected=False,
        )
        cluster.kubectl("apply", "-f", str(harness.CRDS))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(harness.CRDS))
        yield cluster, plane


class CountingJwks:
    """An HTTPS OIDC discovery + JWKS server on loopback that counts the requests it answers."""

    def __init__(self, tls: Tls, jwks: dict[str, Any]) -> None:
        self.port = harness.free_port()
        self.issuer = f"https://127.0.0.1:{self.port}"
        self.requests = 0
        self.jwks = jwks  # replace it to rotate the provider's keys
        self.failing = False  # answer 500 while set
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if outer.failing:
                    self.send_error(500)
                    return
                discovery = {"issuer": outer.issuer, "jwks_uri": f"{outer.issuer}/jwks"}
                body = discovery if "well-known" in self.path else outer.jwks
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls.cert), str(tls.key))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> CountingJwks:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
