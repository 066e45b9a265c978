"""The issuer service against a real API server: discovery and JWKS read by PyJWT's PyJWKClient and by
kube-apiserver's own JWT authenticator, Kubernetes service account token exchange (TokenReview), JWT
bearer assertions (replay, allowedCIDRs), refusals of disabled and deleted principals."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tessera.core import exchange
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
    with urllib.request.urlopen(f"{stack.issuer.url}/.well-known/openid-configuration", context=context) as found:
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
