"""``tessera sidecar`` as a process, over real HTTP on loopback: the security table through the
auth-request endpoint, a real nginx in front of a real app, the reverse proxy, live bundle updates,
readiness and metrics."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import waiting
from tests.harness import Cluster, Operator
from tests.resources import SA, apply, bundle, opt_in, token_in
from tests.sidecar_cases import CASES, Case
from tests.sidecar_harness import (
    Process,
    Sidecar,
    request,
    start_echo,
    start_nginx,
    start_sidecar,
    wait_for_bundle,
    write_rules,
)
from tests.sidecar_kit import BILLING, REPORTS, Kit, write_bundle_dir


def bearer(token: str) -> dict[str, str | list[str]]:
    return {"Authorization": f"Bearer {token}"}


def original(uri: str, token: str, method: str = "GET") -> dict[str, str | list[str]]:
    """Headers of an nginx auth subrequest for ``method uri`` with ``token``."""
    return {"X-Original-URI": uri, "X-Original-Method": method, **bearer(token)}


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def kit() -> Kit:
    return Kit.make(now=int(time.time()))


@pytest.fixture
def bundle_dir(tmp_path: Path, kit: Kit) -> Path:
    folder = tmp_path / "bundle"
    write_bundle_dir(folder, kit.bundle_text())
    return folder


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[Process]:
    app = start_echo(tmp_path)
    yield app
    app.stop()


@pytest.fixture
def sidecar(tmp_path: Path, bundle_dir: Path, echo: Process) -> Iterator[Sidecar]:
    running = start_sidecar(tmp_path, bundle_dir, write_rules(tmp_path), upstream=echo.port)
    yield running
    running.stop()
    assert "Traceback" not in running.logs(), running.logs()[-3000:]


def auth(sidecar: Sidecar, case: Case, kit: Kit) -> tuple[int, str | None, str | None]:
    headers: dict[str, str | list[str]] = {
        "X-Original-Method": case.method,
        "X-Original-URI": case.target,
        "X-Real-IP": case.source,
        "Authorization": case.authorization(kit),
    }
    answer = request(sidecar.port, "GET", "/auth", headers)
    return answer.status, answer.headers.get("X-Tessera-Reason"), answer.headers.get("WWW-Authenticate")


def test_security_table_over_http(sidecar: Sidecar, kit: Kit, bundle_dir: Path) -> None:
    """Every case through the auth-request endpoint; cases that change the bundle swap it live first."""
    baseline = kit.bundle_text()
    for case in CASES:
        if case.setup is not None:
            changed = Kit(**{**kit.__dict__, "revoked": dict(kit.revoked), "cidrs": dict(kit.cidrs)})
            case.setup(changed)
            write_bundle_dir(bundle_dir, changed.bundle_text())
            wait_for_bundle(sidecar.port, digest(changed.bundle_text()))
            status, reason, challenge = auth(sidecar, case, changed)
            write_bundle_dir(bundle_dir, baseline)
            wait_for_bundle(sidecar.port, digest(baseline))
        else:
            status, reason, challenge = auth(sidecar, case, kit)
        assert (status, reason) == (case.status, case.reason), case.name
        if status in (401, 403):
            assert challenge is not None and challenge.startswith('Bearer realm="tessera"'), case.name


def test_nginx_auth_request_in_front_of_a_real_app(tmp_path: Path, sidecar: Sidecar, echo: Process, kit: Kit) -> None:
    nginx = start_nginx(tmp_path, sidecar.port, echo.port)
    try:
        spoof = {"X-Tessera-Subject": "urn:tessera:serviceaccount:shop:admin", "X-Tessera-Permissions": "*.*.*"}
        ok = request(nginx.port, "GET", "/orders/7", {"Authorization": f"Bearer {kit.issued()}", **spoof})
        assert ok.status == 200, ok.body
        seen = ok.json()
        assert seen["subject"] == [BILLING] and seen["path"] == "/orders/7"
        assert seen["headers"]["X-Tessera-Permissions"] == "shop.*.list shop.orders.read"

        public = request(nginx.port, "GET", "/healthz", spoof)
        assert public.status == 200 and "X-Tessera-Subject" not in public.json()["headers"]

        missing = request(nginx.port, "GET", "/orders/7")
        assert missing.status == 401 and missing.headers["X-Tessera-Reason"] == "missing_token"
        assert missing.headers["WWW-Authenticate"] == 'Bearer realm="tessera"'
        expired = request(nginx.port, "GET", "/orders/7", {"Authorization": f"Bearer {kit.issued(exp=kit.now - 100)}"})
        assert expired.status == 401 and expired.headers["X-Tessera-Reason"] == "expired"
        assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
        denied = request(nginx.port, "GET", "/orders/7", {"Authorization": f"Bearer {kit.issued(REPORTS)}"})
        assert denied.status == 403 and denied.headers["X-Tessera-Reason"] == "permission_denied"
        for trick in ("//orders/7", "/orders/%2e%2e/admin/x", "/ADMIN/x"):
            tricked = request(nginx.port, "GET", trick, {"Authorization": f"Bearer {kit.issued()}"})
            assert tricked.status == 403, (trick, tricked.status)
        # nginx passes the caller's address; a range restriction applies to it
        restricted = request(
            nginx.port, "GET", "/orders/7", {"Authorization": f"Bearer {kit.issued(cidrs=['10.0.0.0/8'])}"}
        )
        assert restricted.status == 403 and restricted.headers["X-Tessera-Reason"] == "source_not_allowed"
    finally:
        nginx.stop()


def test_reverse_proxy_strips_spoofed_identity_streams_bodies_and_keeps_connections(sidecar: Sidecar, kit: Kit) -> None:
    assert sidecar.proxy_port is not None
    token = kit.issued()
    spoof = {"X-Tessera-Subject": "urn:tessera:serviceaccount:shop:admin", "x-tessera-issuer": "https://evil"}
    answer = request(sidecar.proxy_port, "GET", "/orders/9?full=1", {"Authorization": f"Bearer {token}", **spoof})
    assert answer.status == 200 and answer.headers["X-App"] == "echo"
    seen = answer.json()
    assert seen["subject"] == [BILLING] and seen["path"] == "/orders/9?full=1"
    assert seen["headers"]["X-Tessera-Issuer"] == kit.bundle()["issuer"]
    assert seen["headers"]["Authorization"] == f"Bearer {token}"

    body = bytes(range(256)) * 20_000  # 5 MB up
    posted = request(
        sidecar.proxy_port, "POST", "/orders/9/cancel", {"Authorization": f"Bearer {kit.self_signed()}"}, body
    )
    assert posted.status == 200
    assert posted.json()["bodySha256"] == hashlib.sha256(body).hexdigest() and posted.json()["bodyBytes"] == len(body)

    big = request(sidecar.proxy_port, "GET", "/orders/big/8000000", {"Authorization": f"Bearer {token}"})
    assert big.status == 200 and len(big.body) == 8_000_000  # 8 MB down, streamed

    ports = {
        request(sidecar.proxy_port, "GET", "/orders/1", {"Authorization": f"Bearer {token}"}).json()["clientPort"]
        for _ in range(5)
    }
    assert len(ports) == 1  # one kept-alive connection to the app

    refused = request(sidecar.proxy_port, "GET", "/orders/1", spoof)
    assert refused.status == 401 and refused.json() == {"reason": "missing_token"}


def test_the_app_being_down_is_a_502_not_a_500(tmp_path: Path, bundle_dir: Path, kit: Kit) -> None:
    from tests.harness import free_port

    sidecar = start_sidecar(tmp_path, bundle_dir, write_rules(tmp_path), upstream=free_port())
    try:
        assert sidecar.proxy_port is not None
        answer = request(sidecar.proxy_port, "GET", "/orders/1", {"Authorization": f"Bearer {kit.issued()}"})
        assert answer.status == 502 and answer.json() == {"reason": "upstream_unavailable"}
    finally:
        sidecar.stop()


def test_live_bundle_updates_without_dropping_requests(sidecar: Sidecar, kit: Kit, bundle_dir: Path) -> None:
    token = kit.issued()
    statuses: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        headers: dict[str, str | list[str]] = {
            "X-Original-URI": "/orders/1",
            "X-Original-Method": "GET",
            "Authorization": f"Bearer {token}",
        }
        while not stop.is_set():
            try:
                statuses.append(request(sidecar.port, "GET", "/auth", headers).status)
            except OSError as exc:
                errors.append(repr(exc))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(hammer) for _ in range(4)]
        waiting.until(lambda: len(statuses) > 50, what="requests flowing")
        # a new revocation: the token is refused once the swapped bundle is read
        revoked = Kit(**{**kit.__dict__, "revoked": {BILLING: kit.now}})
        write_bundle_dir(bundle_dir, revoked.bundle_text())
        took = wait_for_bundle(sidecar.port, digest(revoked.bundle_text()))
        count = len(statuses)
        waiting.until(lambda: len(statuses) > count + 50, what="more requests")
        after = statuses[count:]
        # a half-written bundle: refused, the last good one stays, readiness says so
        (bundle_dir / "..data" / "bundle.json").write_text(revoked.bundle_text()[:100])
        waiting.until(
            lambda: request(sidecar.port, "GET", "/readyz").json()["mountedBundleValid"] is False, what="refused"
        )
        stop.set()
        for worker in workers:
            worker.result()
    assert not errors, errors[:3]
    assert set(statuses) <= {200, 401} and 200 in statuses
    assert set(after) == {401}  # every request after the swap sees the revocation
    assert took < 5
    ready = request(sidecar.port, "GET", "/readyz")
    assert ready.status == 200 and "not JSON" in ready.json()["lastError"]
    assert ready.json()["bundle"]["digest"] == digest(revoked.bundle_text())[:12]
    metrics = request(sidecar.port, "GET", "/metrics").body.decode()
    assert "tessera_sidecar_bundle_reload_errors_total 1" in metrics and "tessera_sidecar_bundle_valid 0" in metrics
    assert 'tessera_sidecar_decisions_total{result="unauthenticated",reason="revoked"}' in metrics
    assert 'tessera_sidecar_bundles_total{source="mount",outcome="refused"} 1' in metrics


def test_not_ready_until_a_valid_bundle_arrives(tmp_path: Path, kit: Kit) -> None:
    empty = tmp_path / "later"
    empty.mkdir()
    sidecar = start_sidecar(tmp_path, empty, write_rules(tmp_path), wait_ready=False)
    try:
        assert request(sidecar.port, "GET", "/readyz").status == 503
        early = request(
            sidecar.port, "GET", "/auth", {"X-Original-URI": "/orders/1", "Authorization": f"Bearer {kit.issued()}"}
        )
        assert early.status == 401 and early.headers["X-Tessera-Reason"] == "not_ready"
        write_bundle_dir(empty, "{not json")
        waiting.until(lambda: request(sidecar.port, "GET", "/readyz").json()["lastError"], what="the refusal")
        assert request(sidecar.port, "GET", "/readyz").status == 503
        write_bundle_dir(empty, kit.bundle_text())
        waiting.until(lambda: request(sidecar.port, "GET", "/readyz").status == 200, what="ready")
        ok = request(
            sidecar.port, "GET", "/auth", {"X-Original-URI": "/orders/1", "Authorization": f"Bearer {kit.issued()}"}
        )
        assert ok.status == 200 and ok.headers["X-Tessera-Subject"] == BILLING
    finally:
        sidecar.stop()


def test_envoy_and_traefik_headers_and_metrics(sidecar: Sidecar, kit: Kit) -> None:
    token = f"Bearer {kit.issued()}"
    envoy = request(sidecar.port, "GET", "/auth/orders/3", {"Authorization": token})  # ext_authz path_prefix
    assert envoy.status == 200 and envoy.headers["X-Tessera-Subject"] == BILLING
    traefik = request(
        sidecar.port,
        "GET",
        "/auth",
        {"X-Forwarded-Method": "POST", "X-Forwarded-Uri": "/orders/3/cancel", "Authorization": token},
    )
    assert traefik.status == 403 and traefik.headers["X-Tessera-Reason"] == "permission_denied"
    for _ in range(3):
        request(sidecar.port, "GET", "/auth/orders/3", {"Authorization": token})
    text = request(sidecar.port, "GET", "/metrics").body.decode()
    assert 'tessera_sidecar_decisions_total{result="allowed",reason="permitted"} 4' in text
    assert "tessera_sidecar_token_cache_hits_total 4" in text
    public = 'tessera_sidecar_decisions_total{result="allowed",reason="public"} 1'  # the harness's wait for the proxy
    assert public in text and "tessera_sidecar_decision_seconds_count 6" in text
    assert json.loads(request(sidecar.port, "GET", "/readyz").body)["ready"] is True
    forged = kit.issued(aud="elsewhere")  # refused: a failure path must not log it either
    assert request(sidecar.port, "GET", "/auth/orders/3", {"Authorization": f"Bearer {forged}"}).status == 401
    logs = sidecar.logs()
    for sent in (token.removeprefix("Bearer "), forged):
        assert all(part not in logs for part in sent.split(".")), "a token (or part of one) is in the sidecar log"
    assert "BEGIN" not in logs


def test_a_token_the_operator_issued_against_the_bundle_it_published(
    cluster: Cluster, operator: Operator, namespace: str, tmp_path: Path, echo: Process
) -> None:
    """End to end on the real API server: account, role and binding in; the sidecar reads the bundle
    ConfigMap's content (as kubelet would mount it) and admits the account's token; disabling the
    account revokes it in the next bundle."""
    opt_in(cluster, namespace)
    apply(cluster, namespace, SA, "app", {"token": {"audiences": ["orders"]}})
    subject = f"urn:tessera:serviceaccount:{namespace}:app"
    role = {"permissions": ["shop.orders.read"]}
    binding = {"roleRef": {"name": "reader"}, "members": [{"serviceAccount": {"name": "app"}}]}
    for kind, name, spec in (("Role", "reader", role), ("RoleBinding", "readers", binding)):
        doc = {"apiVersion": "iam.tessera.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(doc))

    def mounted() -> str | None:
        found = bundle(cluster, namespace)  # None until the first bundle is published
        return json.dumps(found) if found and subject in found.get("grants", {}) else None

    text = waiting.until(mounted, what="the account's grant in the bundle")
    folder = tmp_path / "mounted"
    write_bundle_dir(folder, text)
    sidecar = start_sidecar(tmp_path, folder, write_rules(tmp_path), upstream=echo.port)
    try:
        token = waiting.until(lambda: token_in(cluster, namespace, "app-tessera-token"), what="the token")
        assert sidecar.proxy_port is not None
        ok = request(sidecar.proxy_port, "GET", "/orders/1", bearer(token))
        assert ok.status == 200 and ok.json()["subject"] == [subject]
        assert request(sidecar.proxy_port, "POST", "/orders/1/cancel", bearer(token)).status == 403

        apply(cluster, namespace, SA, "app", {"token": {"audiences": ["orders"]}, "disabled": True})

        def revoking() -> str | None:
            current = cluster.configmap_data(namespace, "tessera-trust-bundle")["bundle.json"]
            return current if any(r["sub"] == subject for r in json.loads(current)["revocations"]) else None

        revoked = waiting.until(revoking, what="the revocation in the bundle")
        write_bundle_dir(folder, revoked)
        wait_for_bundle(sidecar.port, digest(revoked))
        refused = request(sidecar.proxy_port, "GET", "/orders/1", bearer(token))
        assert refused.status == 401 and refused.json() == {"reason": "revoked"}
    finally:
        sidecar.stop()


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(authorization=HEADER_TEXT, uri=HEADER_TEXT, method=st.sampled_from(["GET", "POST", "get", "DELETE", "X"]))
def test_random_requests_over_http_never_pass_or_fail(
    sidecar: Sidecar, authorization: str, uri: str, method: str
) -> None:
    headers: dict[str, str | list[str]] = {"X-Original-URI": uri, "X-Original-Method": method}
    if authorization.strip():
        headers["Authorization"] = authorization
    answer = request(sidecar.port, "GET", "/auth", headers)
    public = answer.headers.get("X-Tessera-Reason") == "public"  # a random path may be the public /healthz
    assert answer.status in (401, 403) or (answer.status == 200 and public), (answer.status, answer.body[:200])
