"""Egress: ``tessera sidecar --egress`` as a process, over real HTTP. The app calls a local port with no
token; only the configured upstream receives the request, with the Pod's current token (a token the
app sent is replaced; a request naming another host never leaves). The token follows the mounted
Secret as kubelet swaps it, and is never sent once expired. Against a real API server, operator and
issuer: an app that never reads a token calls a verifying sidecar through egress, with its Pod's
Kubernetes token exchanged at the issuer, across token refreshes and an issuer key rotation."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera.core import settings
from tests import harness, issuer_kit, waiting
from tests.harness import Cluster, create_namespace, free_port, start_operator, stop_operator
from tests.resources import SA, apply, bundle
from tests.sidecar_harness import Process, Sidecar, request, start_echo, start_sidecar, write_rules
from tests.sidecar_kit import Kit, write_bundle_dir, write_mounted


class Counting:
    """A TCP listener that counts whoever reaches it (and answers nothing)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[Process]:
    app = start_echo(tmp_path)
    yield app
    app.stop()


def start_egress(tmp_path: Path, routes: dict[int, int | str], *extra: str, wait_ready: bool = True) -> Sidecar:
    """An egress-only sidecar: local port -> upstream (a loopback port, or a URL)."""
    args = ["--egress-only", *extra]
    for local, upstream in routes.items():
        url = upstream if isinstance(upstream, str) else f"http://127.0.0.1:{upstream}"
        args += ["--egress", f"127.0.0.1:{local}={url}"]
    return start_sidecar(tmp_path, tmp_path, tmp_path / "none.yaml", extra=tuple(args), wait_ready=wait_ready)


def raw(port: int, data: bytes) -> bytes:
    """Bytes sent as they are; the whole answer read until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.settimeout(2)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_only_the_configured_upstream_gets_the_token_and_it_follows_the_mounted_secret(
    tmp_path: Path, echo: Process
) -> None:
    kit = Kit.make(now=int(time.time()))
    secret = tmp_path / "token"
    first = kit.issued(jti="first")
    write_mounted(secret, "token", first)
    elsewhere = Counting()
    local = free_port()
    sidecar = start_egress(tmp_path, {local: echo.port}, "--token-file", str(secret / "token"))
    try:
        sent = request(
            local, "GET", "/orders/1?x=1",
            {"Authorization": "Bearer the-apps-own", "Host": f"127.0.0.1:{elsewhere.port}", "X-Custom": "kept"},
        )  # fmt: skip
        assert sent.status == 200 and sent.headers["X-App"] == "echo"
        seen = sent.json()
        assert seen["authorization"] == [f"Bearer {first}"]  # replaced, not added
        assert seen["headers"]["Host"] == f"127.0.0.1:{echo.port}" and seen["headers"]["X-Custom"] == "kept"
        assert seen["path"] == "/orders/1?x=1"
        for tricked in (
            f"GET http://127.0.0.1:{elsewhere.port}/steal HTTP/1.1\r\nHost: 127.0.0.1:{elsewhere.port}\r\n\r\n",
            f"CONNECT 127.0.0.1:{elsewhere.port} HTTP/1.1\r\nHost: 127.0.0.1:{elsewhere.port}\r\n\r\n",
        ):
            answer = raw(local, tricked.encode())
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert elsewhere.accepted == 0

        body = bytes(range(256)) * 4096  # 1 MB up, streamed
        posted = request(local, "POST", "/orders/1/cancel", {}, body)
        assert posted.json()["bodySha256"] == hashlib.sha256(body).hexdigest()

        second = kit.issued(jti="second")
        write_mounted(secret, "token", second)  # kubelet swaps the Secret's files
        waiting.until(
            lambda: request(local, "GET", "/orders/1").json()["headers"]["Authorization"] == f"Bearer {second}",
            what="the renewed token attached",
        )
        write_mounted(secret, "token", kit.issued(jti="old", iat=kit.now - 900, exp=kit.now - 1))
        waiting.until(lambda: request(local, "GET", "/orders/1").status == 503, what="no expired token sent")
        refused = request(local, "GET", "/orders/1")
        assert refused.json() == {"reason": "no_token"}
        ready = request(sidecar.port, "GET", "/readyz")
        assert ready.status == 503 and ready.json()["egress"]["tokenSource"] == "file"
        metrics = request(sidecar.port, "GET", "/metrics").body.decode()
        route = f'upstream="http://127.0.0.1:{echo.port}"'
        assert f'tessera_sidecar_egress_requests_total{{{route},result="no_token"}}' in metrics
        assert "tessera_sidecar_egress_token_refreshes_total 3" in metrics
    finally:
        sidecar.stop()
        elsewhere.sock.close()
    logs = sidecar.logs()
    assert "Traceback" not in logs and first.split(".")[2] not in logs and second.split(".")[2] not in logs


def test_egress_flags_are_checked(tmp_path: Path) -> None:
    import subprocess
    import sys

    def refused(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tessera.cli", "sidecar", "--namespace", "shop", *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        return done.stderr

    assert "needs a token" in refused("--egress", "127.0.0.1:9001=http://ledger")
    assert "expected LISTEN=URL" in refused("--egress", "127.0.0.1:9001", "--token-file", "t")
    assert "give only the scheme, host and port" in refused(
        "--egress", "127.0.0.1:9001=http://l/x", "--token-file", "t"
    )
    assert "needs at least one --egress" in refused("--egress-only")
    assert "must be an https:// URL" in refused("--issuer-url", "http://issuer", "--kubernetes-token-file", "t")


# --- against the issuer: exchange, refresh, rotation ------------------------------------------------


def kid(token: str) -> str:
    header: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    return str(header["kid"])


def call(port: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/orders/1")
        answer = conn.getresponse()
        body = answer.read()
    finally:
        conn.close()
    line: dict[str, Any] = {"t": time.time(), "status": answer.status}
    if answer.status == 200:
        token = json.loads(body)["headers"]["Authorization"].removeprefix("Bearer ")
        line.update(kid=kid(token), digest=hashlib.sha256(token.encode()).hexdigest()[:12])
    else:
        line["body"] = body[:200].decode(errors="replace")
    return line


def test_an_app_that_never_reads_a_token_calls_through_refreshes_and_a_key_rotation(
    private_cluster: Cluster, tmp_path: Path, echo: Process
) -> None:
    """Egress exchanges the Pod's Kubernetes token at the issuer (60 s tokens, renewed at about 80 %);
    the issuer keys rotate every 20 s (published 6 s before they sign). The ledger's verifying sidecar
    gets bundles through the live channel. Every call of the app succeeds."""
    cluster = private_cluster
    home = create_namespace(cluster, "tessera-system")
    port = free_port()
    issuer_url = f"https://127.0.0.1:{port}"
    env = {
        "TESSERA_ISSUER": issuer_url, "TESSERA_KEY_ROTATION_HOURS": str(20 / 3600),
        "TESSERA_KEY_PUBLISH_LEAD_SECONDS": "6", "TESSERA_MAX_TOKEN_TTL_SECONDS": "60",
        "TESSERA_CLOCK_LEEWAY_SECONDS": "5",
    }  # fmt: skip
    operator = start_operator(cluster, home, tmp_path / "operator.log", extra_env=env)
    tls = issuer_kit.tls_files(tmp_path / "tls")
    issuer = issuer_kit.start_issuer(cluster, home, port, tls, tmp_path / "issuer.log", env)
    running: list[Sidecar] = []
    try:
        apps = create_namespace(cluster, "apps")
        cluster.core.patch_namespace(apps, {"metadata": {"labels": {settings.TRUST_BUNDLE_LABEL: "enabled"}}})
        for account in ("caller", "ledger"):
            cluster.kubectl("create", "serviceaccount", account, "-n", apps)
        caller = {"kubernetesServiceAccount": {"name": "caller"}, "token": {"audiences": ["orders"], "ttlSeconds": 60}}
        apply(cluster, apps, SA, "caller", caller)
        for kind, name, spec in (
            ("Role", "reader", {"permissions": ["shop.orders.read"]}),
            (
                "RoleBinding",
                "readers",
                {"roleRef": {"name": "reader"}, "members": [{"serviceAccount": {"name": "caller"}}]},
            ),
        ):
            doc = {"apiVersion": "iam.tessera.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
            cluster.kubectl("apply", "-n", apps, "-f", "-", stdin=json.dumps(doc))
        subject = f"urn:tessera:serviceaccount:{apps}:caller"

        def granted() -> str | None:
            found = bundle(cluster, apps)
            if found is None or subject not in found["grants"]:
                return None
            return cluster.configmap_data(apps, "tessera-trust-bundle")["bundle.json"]

        mounted = tmp_path / "ledger-bundle"
        write_bundle_dir(mounted, waiting.until(granted, what="the grant in the bundle"))  # then never updated
        tokens = {}
        for account in ("caller", "ledger"):
            tokens[account] = tmp_path / f"{account}-kube-token"
            made = cluster.kubectl("create", "token", account, "-n", apps, "--audience", issuer_url, "--duration=1h")
            tokens[account].write_text(made.stdout.strip())
        ledger = start_sidecar(
            tmp_path, mounted, write_rules(tmp_path), upstream=echo.port, namespace=apps,
            extra=("--issuer-url", issuer_url, "--issuer-ca", str(tls.ca),
                   "--kubernetes-token-file", str(tokens["ledger"]), "--audience", "orders"),
        )  # fmt: skip
        running.append(ledger)
        local = free_port()
        assert ledger.proxy_port is not None
        egress = start_egress(
            tmp_path, {local: ledger.proxy_port}, "--issuer-url", issuer_url, "--issuer-ca", str(tls.ca),
            "--kubernetes-token-file", str(tokens["caller"]), "--egress-audience", "orders",
        )  # fmt: skip
        running.append(egress)

        calls: list[dict[str, Any]] = []

        def moved_on() -> bool:
            calls.append(call(local))
            kids = {c.get("kid") for c in calls if c["status"] == 200}
            digests = {c.get("digest") for c in calls if c["status"] == 200}
            return len(kids) >= 2 and len(digests) >= 3

        waiting.until(moved_on, timeout=180, interval=0.2, what="calls with two refreshes and a new key")
        failed = [c for c in calls if c["status"] != 200]
        assert failed == [], failed[:3]
        ready = request(egress.port, "GET", "/readyz").json()
        assert ready["ready"] is True and ready["egress"]["tokenSource"] == "exchange"
        assert request(ledger.port, "GET", "/readyz").json()["bundle"]["source"] == "channel"
        logs = egress.logs() + ledger.logs()
        assert "Traceback" not in logs and tokens["caller"].read_text() not in logs
    finally:
        for sidecar in running:
            sidecar.stop()
        harness.stop_process(issuer.process)
        stop_operator(operator)
