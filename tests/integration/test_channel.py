"""The live bundle channel against a real API server, operator and issuer: the issuer serves a Pod's
own namespace's bundle (TokenReview) and refuses everything else with a reason; a sidecar gets a
revocation through it while its mounted file stays stale, never goes back to an older bundle from
either path, keeps working from the mount when the channel fails (and says so), and reconnects
after the issuer restarts."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tessera import protocol, trustbundle
from tests import harness, issuer_kit, waiting
from tests.integration.conftest import IssuerStack
from tests.resources import SA, apply, opt_in, token_in
from tests.sidecar_harness import Sidecar, request, start_sidecar, write_rules
from tests.sidecar_kit import write_bundle_dir

pytestmark = pytest.mark.integration


@pytest.fixture
def ns(issuer_stack: IssuerStack) -> Iterator[str]:
    name = harness.create_namespace(issuer_stack.cluster, "chan")
    yield name
    issuer_stack.cluster.core.delete_namespace(name)


def bundle_text(stack: IssuerStack, namespace: str) -> str | None:
    try:
        return stack.cluster.configmap_data(namespace, "tessera-trust-bundle").get("bundle.json")
    except Exception:  # not there yet
        return None


def sequence(text: str) -> int:
    found = trustbundle.parse(text).sequence
    assert found is not None
    return found


def kube_token(stack: IssuerStack, namespace: str, account: str, audience: str | None = None) -> str:
    done = stack.cluster.kubectl("get", "serviceaccount", account, "-n", namespace, check=False)
    if done.returncode != 0:
        stack.cluster.kubectl("create", "serviceaccount", account, "-n", namespace)
    return stack.cluster.kubectl(
        "create", "token", account, "-n", namespace, "--audience", audience or stack.issuer.url
    ).stdout.strip()


def kube_token_file(stack: IssuerStack, namespace: str, folder: Path, audience: str | None = None) -> Path:
    """The ledger Pod's projected Kubernetes token, as a file the sidecar reads."""
    path = folder / "kube-token"
    path.write_text(kube_token(stack, namespace, "ledger", audience))
    return path


def poll(
    issuer: issuer_kit.Issuer,
    namespace: str,
    token: str | None,
    after: int = 0,
    wait: int = 0,
    target: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return issuer.request("GET", target or protocol.bundle_target(namespace, after, wait), headers=headers)


def counter(text: str, series: str) -> float:
    """The value of one series in a Prometheus text page."""
    found = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(series + " ")]
    assert len(found) == 1, (series, text[-2000:])
    return float(found[0])


def reason(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
    return answer[0], json.loads(answer[2])["reason"]


def test_the_issuer_serves_a_pods_own_namespace_and_refuses_the_rest_with_a_reason(
    issuer_stack: IssuerStack, ns: str
) -> None:
    stack, issuer = issuer_stack, issuer_stack.issuer
    opt_in(stack.cluster, ns)
    other = harness.create_namespace(stack.cluster, "chan-other")
    closed = harness.create_namespace(stack.cluster, "chan-closed")  # no opt-in: no bundle
    try:
        opt_in(stack.cluster, other)
        text = waiting.until(lambda: bundle_text(stack, ns), what="the bundle")
        waiting.until(lambda: bundle_text(stack, other), what="the other namespace's bundle")
        token = kube_token(stack, ns, "pod")

        status, headers, body = poll(issuer, ns, token)
        assert status == 200 and body.decode() == text
        assert headers["etag"] == f'"{sequence(text)}"' and headers["cache-control"] == "no-store"
        held = poll(issuer, ns, token, after=sequence(text), wait=1)
        assert held[0] == 304 and held[1]["etag"] == f'"{sequence(text)}"'

        assert reason(poll(issuer, other, token)) == (403, "other_namespace")
        assert reason(poll(issuer, closed, kube_token(stack, closed, "pod"))) == (404, "no_bundle")
        missing = poll(issuer, ns, None)
        assert reason(missing) == (401, "missing_token") and missing[1]["www-authenticate"] == 'Bearer realm="tessera"'
        assert reason(poll(issuer, ns, kube_token(stack, ns, "pod", "elsewhere"))) == (401, "token_refused")
        assert reason(poll(issuer, ns, "not.a.token")) == (401, "token_refused")
        two = issuer.request("GET", protocol.bundle_target(ns, 0, 0), headers={"Authorization": "Basic eDp5"})
        assert reason(two) == (401, "not_a_bearer_token")
        for target, why in (
            (f"/bundles/{ns}?after=-1", "bad_parameter"),
            (f"/bundles/{ns}?wait=soon", "bad_parameter"),
            (f"/bundles/{ns}?after=1&since=2", "bad_parameter"),
            ("/bundles/Not_A_Namespace", "bad_namespace"),
        ):
            assert reason(poll(issuer, ns, token, target=target)) == (400, why), target

        # a waiting poll is answered by the next change of its namespace, not at the end of its wait
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting_poll = pool.submit(poll, issuer, ns, token, sequence(text), 50)
            waiting.until(lambda: issuer.get_json("/readyz")["channel"]["waiting"] >= 1, what="the poll waiting")
            apply(stack.cluster, ns, SA, "ranged", {"allowedCIDRs": ["10.1.0.0/16"]})
            status, headers, body = waiting_poll.result(timeout=45)
        assert status == 200 and sequence(body.decode()) > sequence(text)
        assert "urn:tessera:serviceaccount:" + ns + ":ranged" in json.loads(body)["accounts"]
        assert "Traceback" not in issuer.logs()
    finally:
        for name in (other, closed):
            stack.cluster.core.delete_namespace(name)


def sidecar_args(issuer_url: str, ca: Path, token_file: Path) -> tuple[str, ...]:
    return ("--issuer-url", issuer_url, "--issuer-ca", str(ca), "--kubernetes-token-file", str(token_file),
            "--audience", "orders")  # fmt: skip


def readiness(sidecar: Sidecar) -> dict[str, Any]:
    found: dict[str, Any] = request(sidecar.port, "GET", "/readyz").json()
    return found


def channel_state(sidecar: Sidecar) -> str:
    return str(readiness(sidecar)["channel"]["state"])


def ask(sidecar: Sidecar, token: str) -> tuple[int, str | None]:
    answer = request(
        sidecar.port, "GET", "/auth",
        {"X-Original-URI": "/orders/1", "X-Original-Method": "GET", "Authorization": f"Bearer {token}"},
    )  # fmt: skip
    return answer.status, answer.headers.get("X-Tessera-Reason")


def workload(stack: IssuerStack, ns: str, tmp_path: Path) -> tuple[str, Path, str]:
    """A granted account 'app' with its token, and the namespace's bundle laid out as kubelet mounts it."""
    opt_in(stack.cluster, ns)
    apply(stack.cluster, ns, SA, "app", {"token": {"audiences": ["orders"]}})
    subject = f"urn:tessera:serviceaccount:{ns}:app"
    role = {"permissions": ["shop.orders.read"]}
    binding = {"roleRef": {"name": "reader"}, "members": [{"serviceAccount": {"name": "app"}}]}
    for kind, name, spec in (("Role", "reader", role), ("RoleBinding", "readers", binding)):
        doc = {"apiVersion": "iam.tessera.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}
        stack.cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=json.dumps(doc))

    def granted() -> str | None:
        text = bundle_text(stack, ns)
        return text if text and subject in json.loads(text)["grants"] else None

    text = waiting.until(granted, what="the grant in the bundle")
    folder = tmp_path / "mounted"
    write_bundle_dir(folder, text)
    token = waiting.until(lambda: token_in(stack.cluster, ns, "app-tessera-token"), what="the token")
    return token, folder, text


def disable(stack: IssuerStack, ns: str) -> None:
    apply(stack.cluster, ns, SA, "app", {"token": {"audiences": ["orders"]}, "disabled": True})


def test_a_revocation_arrives_through_the_channel_and_no_path_takes_the_sidecar_back(
    issuer_stack: IssuerStack, ns: str, tmp_path: Path
) -> None:
    stack = issuer_stack
    token, folder, mounted = workload(stack, ns, tmp_path)
    token_file = kube_token_file(stack, ns, tmp_path)
    args = sidecar_args(stack.issuer.url, stack.issuer.tls.ca, token_file)
    sidecar = start_sidecar(tmp_path, folder, write_rules(tmp_path), extra=args, namespace=ns)
    try:
        waiting.until(lambda: channel_state(sidecar) == "up", what="the channel up")
        assert ask(sidecar, token) == (200, "permitted")
        disable(stack, ns)
        waiting.until(lambda: ask(sidecar, token) == (401, "revoked"), timeout=10, what="the revocation")
        ready = readiness(sidecar)
        assert ready["bundle"]["source"] == "channel" and ready["bundle"]["sequence"] > sequence(mounted)
        revoked_text = bundle_text(stack, ns)
        assert revoked_text is not None and ready["bundle"]["sequence"] == sequence(revoked_text)

        # kubelet brings the older bundle into the mount (as it would, late): it is not taken
        write_bundle_dir(folder, mounted)

        def metrics() -> str:
            return request(sidecar.port, "GET", "/metrics").body.decode()

        waiting.until(lambda: 'source="mount",outcome="older"} 1' in metrics(), what="the older mount ignored")
        assert ask(sidecar, token) == (401, "revoked")
        write_bundle_dir(folder, revoked_text)  # then the current one: the same, nothing to do
        waiting.until(lambda: 'source="mount",outcome="same"} 1' in metrics(), what="the same bundle seen")
        text = metrics()
        assert (
            "tessera_sidecar_channel_up 1" in text
            and f"tessera_sidecar_bundle_sequence {sequence(revoked_text)}" in text
        )
        assert 'tessera_sidecar_bundles_total{source="channel",outcome="installed"}' in text
        assert readiness(sidecar)["mountedBundleValid"] is True
    finally:
        sidecar.stop()
    logs = sidecar.logs()
    assert "Traceback" not in logs and token_file.read_text() not in logs and token not in logs


def test_with_the_channel_failing_the_mount_keeps_working_and_the_failure_shows(
    issuer_stack: IssuerStack, ns: str, tmp_path: Path
) -> None:
    stack = issuer_stack
    token, folder, _ = workload(stack, ns, tmp_path)
    token_file = kube_token_file(stack, ns, tmp_path)
    nowhere = f"https://127.0.0.1:{harness.free_port()}"
    args = sidecar_args(nowhere, stack.issuer.tls.ca, token_file)
    cut = start_sidecar(tmp_path, folder, write_rules(tmp_path), extra=args, namespace=ns)
    # a token of this namespace, but the sidecar asks for another one's bundle: refused by the issuer
    wrong = start_sidecar(
        tmp_path, folder, write_rules(tmp_path), namespace="default",
        extra=sidecar_args(stack.issuer.url, stack.issuer.tls.ca, token_file),
    )  # fmt: skip
    try:
        for sidecar, kind in ((cut, "connect"), (wrong, "forbidden")):

            def failed_twice(s: Sidecar = sidecar) -> bool:
                return bool(readiness(s)["channel"]["consecutiveFailures"] >= 2)

            waiting.until(failed_twice, what="two failures in a row")
            ready = readiness(sidecar)
            assert ready["ready"] is True and ready["channel"]["state"] == "failing"
            assert ready["channel"]["lastError"].startswith(kind)
            text = request(sidecar.port, "GET", "/metrics").body.decode()
            assert "tessera_sidecar_channel_up 0" in text
            assert counter(text, f'tessera_sidecar_channel_failures_total{{reason="{kind}"}}') >= 2
        assert ask(cut, token) == (200, "permitted")
        disable(stack, ns)

        def revoked() -> str | None:
            text = bundle_text(stack, ns)
            subject = f"urn:tessera:serviceaccount:{ns}:app"
            return text if text and any(r["sub"] == subject for r in json.loads(text)["revocations"]) else None

        write_bundle_dir(folder, waiting.until(revoked, what="the revocation in the bundle"))  # kubelet, later
        waiting.until(lambda: ask(cut, token) == (401, "revoked"), what="the revocation from the mount")
        assert readiness(cut)["bundle"]["source"] == "mount"
    finally:
        cut.stop()
        wrong.stop()
    assert "Traceback" not in cut.logs() + wrong.logs()


def test_the_sidecar_reconnects_after_the_issuer_restarts(issuer_stack: IssuerStack, ns: str, tmp_path: Path) -> None:
    stack = issuer_stack
    token, folder, _ = workload(stack, ns, tmp_path)
    audience = {"TESSERA_KUBERNETES_AUDIENCE": "channel-test"}
    tls = issuer_kit.tls_files(tmp_path / "tls")
    port = harness.free_port()

    def start(n: int) -> issuer_kit.Issuer:
        return issuer_kit.start_issuer(
            stack.cluster, stack.namespace, port, tls, tmp_path / f"issuer-{n}.log", audience
        )

    issuer = start(1)
    token_file = kube_token_file(stack, ns, tmp_path, "channel-test")
    sidecar = start_sidecar(
        tmp_path, folder, write_rules(tmp_path), extra=sidecar_args(issuer.url, tls.ca, token_file), namespace=ns
    )
    try:
        waiting.until(lambda: channel_state(sidecar) == "up", what="the channel up")
        harness.stop_process(issuer.process)
        waiting.until(lambda: channel_state(sidecar) == "failing", what="the channel failing")
        assert ask(sidecar, token) == (200, "permitted")  # the mount serves meanwhile
        issuer = start(2)
        waiting.until(lambda: channel_state(sidecar) == "up", timeout=60, what="the channel up again")
        disable(stack, ns)
        waiting.until(lambda: ask(sidecar, token) == (401, "revoked"), timeout=10, what="the revocation")
        assert readiness(sidecar)["bundle"]["source"] == "channel"
    finally:
        sidecar.stop()
        harness.stop_process(issuer.process)
    assert "Traceback" not in sidecar.logs()
