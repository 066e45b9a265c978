"""A real identity provider end to end: Ory Hydra issues JWT access tokens to a person who logged in
through its authorization-code flow and to a client-credentials client; Tessera's issuer exchanges
them; the sidecar then allows exactly what the users' RoleBindings grant. The IdentityProvider's
status and events, a disabled provider and one whose keys cannot be fetched."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tessera.crypto import keys
from tests import hydra_kit, issuer_kit, waiting
from tests.integration import test_issuer as kit
from tests.integration.conftest import IssuerStack
from tests.sidecar_harness import request, start_echo, start_sidecar, write_rules
from tests.sidecar_kit import AUDIENCE, write_bundle_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hydra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[hydra_kit.Hydra]:
    with hydra_kit.running(tmp_path_factory.mktemp("hydra"), user="alice") as running:
        yield running


def provider(name: str, issuer: str, ca: str, **spec: Any) -> dict[str, Any]:
    body = {"issuer": issuer, "audiences": [hydra_kit.EXCHANGE_AUDIENCE], "caBundle": ca, "tokenAudiences": [AUDIENCE]}
    return {
        "apiVersion": "iam.tessera.dev/v1alpha1",
        "kind": "IdentityProvider",
        "metadata": {"name": name},
        "spec": {**body, **spec},
    }


def provider_status(stack: IssuerStack, name: str) -> dict[str, Any]:
    obj = stack.cluster.custom.get_cluster_custom_object("iam.tessera.dev", "v1alpha1", "identityproviders", name)
    assert isinstance(obj, dict)
    return dict(obj.get("status") or {})


def ready_condition(stack: IssuerStack, name: str) -> dict[str, Any] | None:
    return next((c for c in provider_status(stack, name).get("conditions", []) if c["type"] == "Ready"), None)


def bind(stack: IssuerStack, ns: str, role: str, permissions: list[str], issuer: str, subject: str) -> None:
    kit.apply(
        stack,
        {
            "apiVersion": "iam.tessera.dev/v1alpha1",
            "kind": "Role",
            "metadata": {"name": role, "namespace": ns},
            "spec": {"permissions": permissions},
        },
    )
    members = [{"user": {"issuer": issuer, "subject": subject}}]
    kit.apply(
        stack,
        {
            "apiVersion": "iam.tessera.dev/v1alpha1",
            "kind": "RoleBinding",
            "metadata": {"name": role, "namespace": ns},
            "spec": {"roleRef": {"name": role}, "members": members},
        },
    )


def test_hydra_users_get_exactly_what_their_bindings_grant(
    issuer_stack: IssuerStack, kit_ns: str, hydra: hydra_kit.Hydra, tmp_path: Path
) -> None:
    stack, ns = issuer_stack, kit_ns
    name = f"hydra-{ns}"
    kit.apply(stack, provider(name, hydra.issuer, hydra.tls.ca.read_text()))
    ready = waiting.until(
        lambda: (c := ready_condition(stack, name)) and c["status"] == "True" and c, what="provider Ready"
    )
    assert ready["reason"] == "KeysFetched"
    shown = provider_status(stack, name)
    assert shown["keyCount"] >= 1 and shown["lastFetchTime"] and shown["jwksURI"].startswith(hydra.issuer)

    person = hydra.log_in()  # alice, through the authorization-code flow
    machine = hydra.client_credentials()
    machine_id = jwt.decode(machine, options={"verify_signature": False})["sub"]
    stack.cluster.kubectl("label", "namespace", ns, "iam.tessera.dev/trust-bundle=enabled")
    bind(stack, ns, "reader", ["shop.orders.read"], hydra.issuer, "alice")
    bind(stack, ns, "canceller", ["shop.orders.write"], hydra.issuer, machine_id)
    alice = f"user:{hydra.issuer}#alice"

    def bundle() -> str | None:
        text = (
            stack.cluster.configmap_data(ns, "tessera-trust-bundle").get("bundle.json") if _exists(stack, ns) else None
        )
        grants = json.loads(text).get("grants", {}) if text else {}
        return text if alice in grants and f"user:{hydra.issuer}#{machine_id}" in grants else None

    text = waiting.until(bundle, what="both users' grants in the trust bundle")
    folder = tmp_path / "bundle"
    write_bundle_dir(folder, text)
    echo = start_echo(tmp_path)
    sidecar = start_sidecar(tmp_path, folder, write_rules(tmp_path), upstream=echo.port)
    try:
        tokens = {}
        for who, subject_token in (("alice", person), ("machine", machine)):
            status, answer = stack.issuer.token(kit.exchange_form(subject_token, audience=AUDIENCE))
            assert status == 200, answer
            tokens[who] = answer["access_token"]
        claims = jwt.decode(tokens["alice"], options={"verify_signature": False})
        assert claims["sub"] == alice and claims["iss"] == stack.issuer.url and claims["aud"] == AUDIENCE
        assert sidecar.proxy_port is not None
        port = sidecar.proxy_port

        def call(who: str, method: str, path: str) -> int:
            return request(port, method, path, {"Authorization": f"Bearer {tokens[who]}"}).status

        assert call("alice", "GET", "/orders/7") == 200
        assert call("alice", "POST", "/orders/7/cancel") == 403
        assert call("alice", "GET", "/admin/users") == 403
        assert call("machine", "POST", "/orders/7/cancel") == 200
        assert call("machine", "GET", "/orders/7") == 403
        seen = request(port, "GET", "/orders/7", {"Authorization": f"Bearer {tokens['alice']}"}).json()
        assert seen["subject"] == [alice]

        # "alice" at another provider is another person: exchanged, but granted nothing here.
        other_key, other_issuer = keys.generate("ES256"), f"https://other-idp.example.com/{ns}"
        other = {"jwks": {"keys": [keys.public_jwk(other_key.public_key(), "o")]}}
        kit.apply(stack, provider(f"other-{ns}", other_issuer, hydra.tls.ca.read_text(), **other))
        now = int(time.time())
        claims = {"iss": other_issuer, "sub": "alice", "aud": hydra_kit.EXCHANGE_AUDIENCE, "exp": now + 300}
        namesake = jwt.encode(claims, other_key, "ES256", {"kid": "o"})

        def exchanged() -> str | None:
            status, answer = stack.issuer.token(kit.exchange_form(namesake, audience=AUDIENCE))
            return str(answer["access_token"]) if status == 200 else None

        tokens["namesake"] = waiting.until(exchanged, what="the other provider's alice exchanged")
        assert (
            jwt.decode(tokens["namesake"], options={"verify_signature": False})["sub"] == f"user:{other_issuer}#alice"
        )
        assert call("namesake", "GET", "/orders/7") == 403
    finally:
        sidecar.stop()
        echo.stop()

    # Disabled: no more exchanges, and the answer says why.
    stack.cluster.kubectl("patch", "identityprovider", name, "--type=merge", "-p", '{"spec":{"disabled":true}}')
    status, answer = stack.issuer.token(kit.exchange_form(hydra.log_in()))
    assert (status, answer["error"]) == (400, "invalid_grant") and "is disabled" in answer["error_description"]
    waiting.until(lambda: (c := ready_condition(stack, name)) and c["reason"] == "Disabled", what="Disabled status")


def _exists(stack: IssuerStack, ns: str) -> bool:
    return bool(
        stack.cluster.core.list_namespaced_config_map(ns, field_selector="metadata.name=tessera-trust-bundle").items
    )


def test_a_provider_whose_keys_cannot_be_fetched_is_not_ready_with_one_warning(
    issuer_stack: IssuerStack, kit_ns: str
) -> None:
    """Ready=False with the reason while its JWKS server fails, one Warning however often the operator
    retries (every refresh check, 2 s here), Ready again once it answers."""
    stack = issuer_stack
    name = f"failing-{kit_ns}"
    with issuer_kit.CountingJwks(stack.issuer.tls, {"keys": []}) as server:
        server.failing = True
        kit.apply(stack, provider(name, server.issuer, stack.issuer.tls.ca.read_text()))
        condition = waiting.until(
            lambda: (c := ready_condition(stack, name)) and c["status"] == "False" and c, what="not Ready"
        )
        assert condition["reason"] == "KeysUnavailable" and "answered 500" in condition["message"]
        waiting.until(lambda: server.requests >= 4, timeout=30, what="the operator to retry a few times")

        def warnings() -> list[dict[str, Any]]:
            listed = stack.cluster.core.list_namespaced_event("default", field_selector=f"involvedObject.name={name}")
            return [e for e in stack.cluster.to_dict(listed)["items"] if e["type"] == "Warning"]

        assert len(warnings()) == 1 and warnings()[0]["reason"] == "KeysUnavailable"
        server.failing = False
        server.jwks = {"keys": [keys.public_jwk(keys.generate("ES256").public_key(), "k1")]}
        healed = waiting.until(
            lambda: (c := ready_condition(stack, name)) and c["status"] == "True" and c, what="Ready"
        )
        assert healed["reason"] == "KeysFetched" and provider_status(stack, name)["keyIds"] == ["k1"]
