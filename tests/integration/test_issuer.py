"""The issuer service against a real API server: discovery and JWKS read by PyJWT's PyJWKClient and by
kube-apiserver's own JWT authenticator, Kubernetes service account token exchange (TokenReview), JWT
bearer assertions (replay, allowedCIDRs), refusals of disabled and deleted principals."""

from __future__ import annotations

import base64
import concurrent.futures
import datetime
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tessera.core import exchange
from tessera.crypto import keys
from tests import harness, issuer_kit, waiting
from tests.integration.conftest import IssuerStack

pytestmark = pytest.mark.integration


@pytest.fixture
def ns(issuer_stack: IssuerStack) -> Iterator[str]:
    name = harness.create_namespace(issuer_stack.cluster, "iss")
    yield name
    issuer_stack.cluster.core.delete_namespace(name)


def apply(stack: IssuerStack, manifest: dict[str, Any]) -> None:
    stack.cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def tessera_account(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "iam.tessera.dev/v1alpha1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def ready(stack: IssuerStack, namespace: str, plural: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = stack.cluster.custom_object(namespace, plural, name)
        conditions = (obj.get("status") or {}).get("conditions") or []
        return obj if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) else None

    return waiting.until(check, timeout=30, what=f"{plural}/{name} Ready")


def kubernetes_token(stack: IssuerStack, namespace: str, name: str, audience: str, *extra: str) -> str:
    return stack.cluster.kubectl(
        "create", "token", name, "-n", namespace, "--audience", audience, *extra
    ).stdout.strip()


def exchange_form(subject_token: str, **more: str) -> dict[str, str]:
    return {
        "grant_type": exchange.TOKEN_EXCHANGE,
        "subject_token": subject_token,
        "subject_token_type": exchange.TYPE_JWT,
        **more,
    }


def robot(stack: IssuerStack, ns: str, **spec: Any) -> str:
    """A Tessera account 'robot' acting for the Kubernetes ServiceAccount 'robot'; a Kubernetes token for it."""
    stack.cluster.kubectl("create", "serviceaccount", "robot", "-n", ns)
    apply(stack, tessera_account("robot", ns, kubernetesServiceAccount={"name": "robot"}, **spec))
    ready(stack, ns, "serviceaccounts", "robot")
    return kubernetes_token(stack, ns, "robot", stack.issuer.url)


def test_discovery_and_jwks_serve_a_generic_oidc_client(issuer_stack: IssuerStack, ns: str) -> None:
    stack = issuer_stack
    subject = robot(stack, ns, token={"audiences": ["ledger"]})
    status, answer = stack.issuer.token(exchange_form(subject))
    assert status == 200, answer
    assert answer["token_type"] == "Bearer" and answer["issued_token_type"] == exchange.TYPE_ACCESS_TOKEN
    context = stack.issuer.tls.context()
    with urllib.request.urlopen(f"{stack.issuer.url}/.well-known/openid-configuration", context=context) as found:  # noqa: S310
        discovery = json.load(found)
    assert discovery["issuer"] == stack.issuer.url
    assert discovery["token_endpoint"] == f"{stack.issuer.url}/token"
    client = jwt.PyJWKClient(discovery["jwks_uri"], ssl_context=context)
    signing = client.get_signing_key_from_jwt(answer["access_token"])
    claims = jwt.decode(
        answer["access_token"], signing.key, algorithms=discovery["id_token_signing_alg_values_supported"],
        audience="ledger", issuer=discovery["issuer"],
    )  # fmt: skip
    assert claims["sub"] == f"urn:tessera:serviceaccount:{ns}:robot"
    assert jwt.get_unverified_header(answer["access_token"])["typ"] == "at+jwt"
    assert "grants" not in claims  # the trust bundle has them
    for key in client.get_jwk_set().keys:
        assert key.key_id and key._jwk_data["use"] == "sig"


def test_kube_apiserver_accepts_tessera_tokens_with_a_prefixed_username(issuer_stack: IssuerStack, ns: str) -> None:
    stack = issuer_stack
    subject = robot(stack, ns, token={"audiences": ["kubernetes"]})
    status, answer = stack.issuer.token(exchange_form(subject))
    assert status == 200, answer
    user = f"{issuer_kit.USERNAME_PREFIX}urn:tessera:serviceaccount:{ns}:robot"
    kubeconfig = token_kubeconfig(
        stack, answer["access_token"], Path(stack.operator.log_path).parent / f"{ns}.kubeconfig"
    )

    def whoami() -> str | None:
        done = stack.cluster.kubectl("--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "json", check=False)
        return done.stdout if done.returncode == 0 else None

    shown = json.loads(waiting.until(whoami, timeout=60, what="kube-apiserver to accept the Tessera token"))
    assert shown["status"]["userInfo"]["username"] == user
    denied = stack.cluster.kubectl("--kubeconfig", str(kubeconfig), "get", "configmaps", "-n", ns, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    stack.cluster.kubectl("create", "role", "reader", "-n", ns, "--verb=get,list", "--resource=configmaps")
    stack.cluster.kubectl("create", "rolebinding", "reader", "-n", ns, "--role=reader", f"--user={user}")

    def allowed() -> bool:
        done = stack.cluster.kubectl("--kubeconfig", str(kubeconfig), "get", "configmaps", "-n", ns, check=False)
        return done.returncode == 0

    waiting.until(allowed, timeout=30, what="RBAC bound to the mapped username to allow the read")


def token_kubeconfig(stack: IssuerStack, token: str, path: Path) -> Path:
    server = stack.plane.info.server
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": server, "certificate-authority": str(stack.plane.info.ca_file)}}
        ],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(json.dumps(config))
    return path


# --- JWT bearer (RFC 7523) --------------------------------------------------------------------------


def generated_key(stack: IssuerStack, ns: str, account: str, name: str) -> tuple[keys.PrivateKey, str, str]:
    """A ServiceAccountKey the operator generates: (private key, kid, subject) from its Secret."""
    apply(
        stack,
        {
            "apiVersion": "iam.tessera.dev/v1alpha1",
            "kind": "ServiceAccountKey",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"serviceAccountName": account, "generate": {"algorithm": "ES256"}},
        },
    )
    ready(stack, ns, "serviceaccountkeys", name)
    secret = stack.cluster.secret(ns, f"{name}-tessera-key")
    assert secret is not None
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    return keys.load_private_pem(data["private-key.pem"]), data["key-id"], data["subject"]


def assertion(private: keys.PrivateKey, kid: str, subject: str, audience: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": subject, "sub": subject, "aud": audience, "iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
    body.update(claims)
    return jwt.encode(
        {k: v for k, v in body.items() if v is not None}, private, algorithm="ES256", headers={"kid": kid}
    )


def bearer_form(signed: str) -> dict[str, str]:
    return {"grant_type": exchange.JWT_BEARER, "assertion": signed}


def test_jwt_bearer_issues_once_per_assertion_and_checks_the_callers_address(
    issuer_stack: IssuerStack, ns: str
) -> None:
    stack = issuer_stack
    endpoint = f"{stack.issuer.url}/token"
    apply(stack, tessera_account("worker", ns, allowedCIDRs=["127.0.0.0/8"], token={"audiences": ["ledger"]}))
    ready(stack, ns, "serviceaccounts", "worker")
    private, kid, subject = generated_key(stack, ns, "worker", "worker-key")
    signed = assertion(private, kid, subject, endpoint)
    status, answer = stack.issuer.token(bearer_form(signed))
    assert status == 200, answer
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    assert claims["sub"] == subject and claims["aud"] == "ledger" and claims["cidrs"] == ["127.0.0.0/8"]
    assert claims["iss"] == stack.issuer.url and "issued_token_type" not in answer
    status, answer = stack.issuer.token(bearer_form(signed))
    assert (status, answer["error"]) == (400, "invalid_grant") and "replayed" in answer["error_description"]
    # Outside the allow-list: no token, and the error says why.
    apply(stack, tessera_account("worker", ns, allowedCIDRs=["10.0.0.0/8"], token={"audiences": ["ledger"]}))
    status, answer = stack.issuer.token(bearer_form(assertion(private, kid, subject, endpoint)))
    assert (status, answer["error"]) == (400, "invalid_grant") and "allowedCIDRs" in answer["error_description"]


def test_no_token_once_an_account_is_disabled_or_deleted(issuer_stack: IssuerStack, ns: str) -> None:
    stack = issuer_stack
    subject_token = robot(stack, ns)
    assert stack.issuer.token(exchange_form(subject_token))[0] == 200
    stack.cluster.kubectl("patch", "tsa", "robot", "-n", ns, "--type=merge", "-p", '{"spec":{"disabled":true}}')
    # The very next request is refused: the issuer reads the account consistently before it signs.
    status, answer = stack.issuer.token(exchange_form(subject_token))
    assert (status, answer["error"]) == (400, "invalid_grant") and "is disabled" in answer["error_description"]
    stack.cluster.kubectl("patch", "tsa", "robot", "-n", ns, "--type=merge", "-p", '{"spec":{"disabled":false}}')
    status, answer = stack.issuer.token(exchange_form(subject_token))
    assert status == 200, answer
    revoked_at = waiting.until(lambda: revocation(stack, f"urn:tessera:serviceaccount:{ns}:robot"), what="revocation")
    assert jwt.decode(answer["access_token"], options={"verify_signature": False})["iat"] >= revoked_at
    stack.cluster.kubectl("delete", "tsa", "robot", "-n", ns, "--wait=false")
    status, answer = stack.issuer.token(exchange_form(subject_token))
    assert (status, answer["error"]) == (400, "invalid_grant"), answer
    # Which words depends on how far the deletion got: the finalizer still on, the account gone, or gone
    # from the issuer's cache too (nothing names the Kubernetes ServiceAccount any more).
    said = answer["error_description"]
    assert any(why in said for why in ("being deleted", "does not exist", "no Tessera ServiceAccount names")), said


def revocation(stack: IssuerStack, subject: str) -> int | None:
    data = stack.cluster.configmap_data(stack.namespace, "tessera-revocations")
    for entry in json.loads(data.get("revocations.json", '{"revocations": []}'))["revocations"]:
        if entry["subject"] == subject:
            return int(datetime.datetime.fromisoformat(entry["notBefore"]).timestamp())
    return None


def test_a_token_bound_to_a_deleted_pod_is_refused(issuer_stack: IssuerStack, ns: str) -> None:
    stack = issuer_stack
    robot(stack, ns)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "worker", "namespace": ns},
        "spec": {"serviceAccountName": "robot", "containers": [{"name": "app", "image": "example.invalid/app:1"}]},
    }
    apply(stack, pod)
    uid = stack.cluster.kubectl("get", "pod", "worker", "-n", ns, "-o", "jsonpath={.metadata.uid}").stdout
    bound = kubernetes_token(
        stack, ns, "robot", stack.issuer.url, "--bound-object-kind=Pod", "--bound-object-name=worker",
        f"--bound-object-uid={uid}",
    )  # fmt: skip
    assert stack.issuer.token(exchange_form(bound))[0] == 200
    stack.cluster.kubectl("delete", "pod", "worker", "-n", ns, "--grace-period=0", "--force")

    # The API server checks the bound Pod through its own informer cache: refused once that has seen it go.
    def refused() -> tuple[int, dict[str, Any]] | None:
        found = stack.issuer.token(exchange_form(bound))
        return found if found[0] != 200 else None

    status, answer = waiting.until(refused, timeout=30, what="the exchange of a token bound to a deleted Pod refused")
    assert (status, answer["error"]) == (400, "invalid_grant") and "did not accept" in answer["error_description"]


# --- For a person at a terminal -----------------------------------------------------------------------


def tessera(stack: IssuerStack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli", *args], input=stdin, capture_output=True, text=True, timeout=60,
        env=stack.cluster.env(), check=False,
    )  # fmt: skip


def test_tessera_token_and_can_i(issuer_stack: IssuerStack, ns: str, tmp_path: Path) -> None:
    stack = issuer_stack
    remote = ["--issuer", stack.issuer.url, "--ca-file", str(stack.issuer.tls.ca)]
    subject_token = robot(stack, ns, token={"audiences": ["ledger"]})
    got = tessera(stack, "token", "exchange", *remote, "--audience", "ledger", stdin=subject_token)
    assert got.returncode == 0, got.stderr
    issued = got.stdout.strip()
    decoded = tessera(stack, "token", "decode", *remote, "--audience", "ledger", stdin=issued)
    assert decoded.returncode == 0 and "valid, expires in" in decoded.stdout, decoded.stdout
    assert f'"sub": "urn:tessera:serviceaccount:{ns}:robot"' in decoded.stdout
    wrong = tessera(stack, "token", "decode", *remote, "--audience", "payments", stdin=issued)
    assert wrong.returncode == 1 and "invalid: wrong_audience" in wrong.stdout
    refused = tessera(stack, "token", "exchange", *remote, "--audience", "payments", stdin=subject_token)
    assert refused.returncode == 1 and "invalid_target" in refused.stderr and not refused.stdout

    # JWT bearer from the command line, with a key the operator generated.
    apply(stack, tessera_account("worker", ns))
    ready(stack, ns, "serviceaccounts", "worker")
    private, kid, subject = generated_key(stack, ns, "worker", "worker-key")
    pem = tmp_path / "key.pem"
    pem.write_text(keys.private_pem(private))
    asserted = tessera(
        stack, "token", "assert", *remote, "--private-key", str(pem), "--key-id", kid, "--subject", subject
    )
    assert asserted.returncode == 0, asserted.stderr
    assert jwt.decode(asserted.stdout.strip(), options={"verify_signature": False})["sub"] == subject

    # can-i: the sidecar's answer from the namespace's bundle, and the bindings behind it.
    stack.cluster.kubectl("label", "namespace", ns, "iam.tessera.dev/trust-bundle=enabled")
    role = {"apiVersion": "iam.tessera.dev/v1alpha1", "kind": "Role", "metadata": {"name": "ledger", "namespace": ns}}
    apply(stack, {**role, "spec": {"permissions": ["shop.ledger.*"]}})
    binding = {"roleRef": {"name": "ledger"}, "members": [{"serviceAccount": {"name": "worker"}}]}
    apply(
        stack,
        {
            "apiVersion": "iam.tessera.dev/v1alpha1",
            "kind": "RoleBinding",
            "metadata": {"name": "w", "namespace": ns},
            "spec": binding,
        },
    )

    def granted() -> subprocess.CompletedProcess[str] | None:
        done = tessera(stack, "can-i", subject, "shop.ledger.write", "-n", ns)
        return done if done.returncode == 0 else None

    yes = waiting.until(granted, what="can-i to say yes")
    assert yes.stdout.startswith(f"yes: {subject} may shop.ledger.write in {ns} (from the namespace's trust bundle)")
    assert f"granted by RoleBinding {ns}/w (Role ledger: shop.ledger.*)" in yes.stdout
    no = tessera(stack, "can-i", subject, "shop.orders.write", "-n", ns)
    assert no.returncode == 1 and no.stdout.startswith("no: ")

    # decode against the namespace's trust bundle, as the sidecar would: valid, then revoked.
    def bundle_file(revoked: bool) -> Path | None:
        text = stack.cluster.configmap_data(ns, "tessera-trust-bundle")["bundle.json"]
        robot_subject = f"urn:tessera:serviceaccount:{ns}:robot"
        if (robot_subject in {r["sub"] for r in json.loads(text)["revocations"]}) != revoked:
            return None
        path = tmp_path / f"bundle-{revoked}.json"
        path.write_text(text)
        return path

    fresh = waiting.until(lambda: bundle_file(False), what="the bundle")
    checked = tessera(stack, "token", "decode", "--bundle", str(fresh), "--audience", "ledger", stdin=issued)
    assert checked.returncode == 0 and "valid, expires in" in checked.stdout, checked.stdout
    stack.cluster.kubectl("patch", "tsa", "robot", "-n", ns, "--type=merge", "-p", '{"spec":{"disabled":true}}')
    revoked = waiting.until(lambda: bundle_file(True), what="the revocation in the bundle")
    checked = tessera(stack, "token", "decode", "--bundle", str(revoked), "--audience", "ledger", stdin=issued)
    assert checked.returncode == 1 and "invalid: revoked" in checked.stdout, checked.stdout


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"issuer": "http://idp.example.com", "audiences": ["t"]}, "spec.issuer"),
        ({"issuer": "https://idp.example.com", "audiences": []}, "spec.audiences"),
        (
            {
                "issuer": "https://idp.example.com",
                "audiences": ["t"],
                "jwksURI": "https://idp.example.com/keys",
                "jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "k"}]},
            },
            "give jwksURI or jwks, not both",
        ),
        ({"issuer": "https://idp.example.com", "audiences": ["t"], "algorithms": ["HS256"]}, "spec.algorithms"),
        ({"issuer": "https://idp.example.com", "audiences": ["t"], "refreshSeconds": 5}, "spec.refreshSeconds"),
        (
            {"issuer": "https://idp.example.com", "audiences": ["t"], "jwks": {"keys": [{"kty": "EC", "d": "AA"}]}},
            "private key members",
        ),
    ],
)
def test_bad_identity_providers_are_refused_at_apply(
    issuer_stack: IssuerStack, spec: dict[str, Any], says: str
) -> None:
    manifest = {
        "apiVersion": "iam.tessera.dev/v1alpha1",
        "kind": "IdentityProvider",
        "metadata": {"name": "bad"},
        "spec": spec,
    }
    done = issuer_stack.cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest), check=False)
    assert done.returncode != 0 and says in done.stderr, done.stderr


def test_a_bad_kubernetes_service_account_name_is_refused_at_apply(issuer_stack: IssuerStack, ns: str) -> None:
    manifest = tessera_account("robot", ns, kubernetesServiceAccount={"name": "Not_A_Name"})
    done = issuer_stack.cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest), check=False)
    assert done.returncode != 0 and "spec.kubernetesServiceAccount.name" in done.stderr, done.stderr


def test_two_replicas_serve_and_share_replay_protection(issuer_stack: IssuerStack, ns: str, tmp_path: Path) -> None:
    """A second issuer process for the same issuer URL serves on its own, and one assertion sent to both
    replicas at once is honoured exactly once."""
    stack = issuer_stack
    port = harness.free_port()
    url = {"TESSERA_ISSUER": stack.issuer.url, "TESSERA_PROVIDER_REFETCH_SECONDS": "3"}
    second = issuer_kit.start_issuer(
        stack.cluster, stack.namespace, port, stack.issuer.tls, tmp_path / "second.log", url
    )
    try:
        assert second.get_json("/.well-known/openid-configuration") == stack.issuer.get_json(
            "/.well-known/openid-configuration"
        )
        assert second.get_json("/jwks") == stack.issuer.get_json("/jwks")
        apply(stack, tessera_account("worker", ns))
        ready(stack, ns, "serviceaccounts", "worker")
        private, kid, subject = generated_key(stack, ns, "worker", "worker-key")
        for _ in range(5):
            form = bearer_form(assertion(private, kid, subject, f"{stack.issuer.url}/token"))
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                answers = list(pool.map(lambda replica, form=form: replica.token(form), (stack.issuer, second)))
            assert sorted(status for status, _ in answers) == [200, 400], answers
            refused = next(answer for status, answer in answers if status == 400)
            assert refused["error"] == "invalid_grant" and "replayed" in refused["error_description"]
    finally:
        harness.stop_process(second.process)
