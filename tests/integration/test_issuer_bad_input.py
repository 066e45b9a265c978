# ruff: noqa: E501  (the table reads best one case per line)
"""The token endpoint's answers to bad input, over real HTTPS: each case refused with its RFC 6749 /
RFC 8693 error code and status, none answered with a 500, and no token or key in the issuer's log."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from tessera.core import exchange
from tessera.crypto import keys
from tests import harness, waiting
from tests.integration import test_issuer as kit
from tests.integration.conftest import IssuerStack
from tests.resources import leaks_private_key

pytestmark = pytest.mark.integration

PROVIDER_ISSUER = "https://idp.example.test"
PROVIDER_AUDIENCE = "tessera-exchange"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class World:
    """What the cases are built from: an inline-keyed provider, a Kubernetes account, an account key."""

    def __init__(self, stack: IssuerStack, ns: str) -> None:
        self.stack, self.ns = stack, ns
        self.provider_key = keys.generate("RS256")
        self.kid = keys.thumbprint(self.provider_key.public_key())
        jwk = keys.public_jwk(self.provider_key.public_key(), self.kid)
        self.provider_name = f"idp-{ns}"
        kit.apply(
            stack,
            {
                "apiVersion": "iam.tessera.dev/v1alpha1",
                "kind": "IdentityProvider",
                "metadata": {"name": self.provider_name},
                "spec": {
                    "issuer": PROVIDER_ISSUER + "/" + ns,
                    "jwks": {"keys": [jwk]},
                    "audiences": [PROVIDER_AUDIENCE],
                },
            },
        )
        self.issuer_url = PROVIDER_ISSUER + "/" + ns
        self.k8s_token = kit.robot(stack, ns)
        self.other_audience = kit.kubernetes_token(stack, ns, "robot", "somebody-else")
        kit.apply(stack, kit.tessera_account("worker", ns))
        kit.ready(stack, ns, "serviceaccounts", "worker")
        self.private, self.account_kid, self.subject = kit.generated_key(stack, ns, "worker", "worker-key")
        self.endpoint = f"{stack.issuer.url}/token"
        self.expired, self.expired_kid = self.client_key("expired-key", expiresAt="2020-01-01T00:00:00Z")
        self.disabled, self.disabled_kid = self.client_key("disabled-key", disabled=True)
        self.used = kit.assertion(self.private, self.account_kid, self.subject, self.endpoint)
        assert stack.issuer.token(kit.bearer_form(self.used))[0] == 200

    def client_key(self, name: str, **spec: Any) -> tuple[keys.PrivateKey, str]:
        """A ServiceAccountKey of 'worker' with a client-supplied public key and ``spec``; its kid once registered."""
        private = keys.generate("ES256")
        body = {"serviceAccountName": "worker", "publicKey": {"pem": keys.public_pem(private.public_key())}, **spec}
        kit.apply(
            self.stack,
            {
                "apiVersion": "iam.tessera.dev/v1alpha1",
                "kind": "ServiceAccountKey",
                "metadata": {"name": name, "namespace": self.ns},
                "spec": body,
            },
        )
        kid = keys.thumbprint(private.public_key())
        waiting.until(
            lambda: (
                self.stack.cluster.custom_object(self.ns, "serviceaccountkeys", name).get("status", {}).get("keyId")
                == kid
            ),
            what=f"{name}'s status",
        )
        return private, kid

    def provider_token(self, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.issuer_url, "sub": "alice", "aud": PROVIDER_AUDIENCE, "iat": now, "exp": now + 300}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.provider_key, algorithm="RS256", headers={"kid": self.kid})

    def unsigned(self) -> str:
        now = int(time.time())
        header = _b64(json.dumps({"alg": "none", "kid": self.kid, "typ": "JWT"}).encode())
        body = {"iss": self.issuer_url, "sub": "alice", "aud": PROVIDER_AUDIENCE, "exp": now + 300}
        return f"{header}.{_b64(json.dumps(body).encode())}."

    def key_confusion(self) -> str:
        """HS256 keyed with the provider's public key PEM: the classic algorithm confusion."""
        now = int(time.time())
        header = _b64(json.dumps({"alg": "HS256", "kid": self.kid, "typ": "JWT"}).encode())
        body = {"iss": self.issuer_url, "sub": "mallory", "aud": PROVIDER_AUDIENCE, "exp": now + 300}
        signing_input = f"{header}.{_b64(json.dumps(body).encode())}"
        secret = keys.public_pem(self.provider_key.public_key()).encode()
        return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"

    def stranger_token(self) -> str:
        stranger = keys.generate("ES256")
        now = int(time.time())
        body = {"iss": "https://evil.example", "sub": "alice", "aud": PROVIDER_AUDIENCE, "exp": now + 300}
        return jwt.encode(body, stranger, algorithm="ES256", headers={"kid": "x"})


Form = Callable[[World], list[tuple[str, str]] | dict[str, str] | bytes]
EX = exchange.TOKEN_EXCHANGE


def ex(token: Callable[[World], str], **more: str) -> Form:
    return lambda w: kit.exchange_form(token(w), **more)


CASES: list[tuple[str, Form, int, str, str]] = [
    ("no grant_type", lambda w: {"subject_token": w.k8s_token}, 400, "invalid_request", "grant_type is missing"),
    ("password grant", lambda w: {"grant_type": "password", "username": "a", "password": "b"}, 400, "unsupported_grant_type", "not supported"),
    ("authorization_code grant", lambda w: {"grant_type": "authorization_code", "code": "x"}, 400, "unsupported_grant_type", "not supported"),
    ("client_credentials grant", lambda w: {"grant_type": "client_credentials"}, 400, "unsupported_grant_type", "not supported"),
    ("missing subject_token", lambda w: {"grant_type": EX, "subject_token_type": exchange.TYPE_JWT}, 400, "invalid_request", "subject_token is missing"),
    ("missing subject_token_type", lambda w: {"grant_type": EX, "subject_token": w.k8s_token}, 400, "invalid_request", "subject_token_type is missing"),
    ("empty subject_token", ex(lambda w: ""), 400, "invalid_request", "subject_token is missing"),
    ("SAML subject token type", lambda w: {**kit.exchange_form(w.k8s_token), "subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}, 400, "invalid_request", "subject_token_type"),
    ("duplicated subject_token", lambda w: [*kit.exchange_form(w.k8s_token).items(), ("subject_token", w.k8s_token)], 400, "invalid_request", "more than once"),
    ("duplicated grant_type", lambda w: [*kit.exchange_form(w.k8s_token).items(), ("grant_type", EX)], 400, "invalid_request", "more than once"),
    ("actor_token (delegation)", ex(lambda w: w.k8s_token, actor_token="x", actor_token_type=exchange.TYPE_JWT), 400, "invalid_request", "delegation"),
    ("requested SAML token", ex(lambda w: w.k8s_token, requested_token_type="urn:ietf:params:oauth:token-type:saml2"), 400, "invalid_request", "requested_token_type"),
    ("audience not allowed", ex(lambda w: w.k8s_token, audience="payments"), 400, "invalid_target", "may not be requested"),
    ("not a JWT", ex(lambda w: "not-a-token"), 400, "invalid_grant", "malformed_token"),
    ("untrusted issuer", ex(lambda w: w.stranger_token()), 400, "invalid_grant", "did not accept"),
    ("provider token, wrong audience", ex(lambda w: w.provider_token(aud="someone-else")), 400, "invalid_grant", "wrong_audience"),
    ("provider token, expired", ex(lambda w: w.provider_token(exp=int(time.time()) - 600)), 400, "invalid_grant", "expired"),
    ("provider token, no exp", ex(lambda w: w.provider_token(exp=None)), 400, "invalid_grant", "missing_exp"),
    ("provider token, unknown kid", ex(lambda w: jwt.encode({"iss": w.issuer_url, "sub": "a", "aud": PROVIDER_AUDIENCE, "exp": int(time.time()) + 60}, w.provider_key, algorithm="RS256", headers={"kid": "unknown"})), 400, "invalid_grant", "has no signing key"),
    ("alg none", ex(lambda w: w.unsigned()), 400, "invalid_grant", "alg_key_mismatch"),
    ("key confusion (HS256 with the public key)", ex(lambda w: w.key_confusion()), 400, "invalid_grant", "alg_key_mismatch"),
    ("tampered provider token", ex(lambda w: w.provider_token()[:-4] + "AAAA"), 400, "invalid_grant", "bad_signature"),
    ("Kubernetes token for another audience", ex(lambda w: w.other_audience), 400, "invalid_grant", "did not accept"),
    ("replayed assertion", lambda w: kit.bearer_form(w.used), 400, "invalid_grant", "replayed"),
    ("assertion without jti", lambda w: kit.bearer_form(kit.assertion(w.private, w.account_kid, w.subject, w.endpoint, jti=None)), 400, "invalid_grant", "missing_jti"),
    ("assertion for another audience", lambda w: kit.bearer_form(kit.assertion(w.private, w.account_kid, w.subject, "https://elsewhere")), 400, "invalid_grant", "wrong_audience"),
    ("assertion living an hour", lambda w: kit.bearer_form(kit.assertion(w.private, w.account_kid, w.subject, w.endpoint, exp=int(time.time()) + 3600)), 400, "invalid_grant", "short-lived"),
    ("assertion for another subject", lambda w: kit.bearer_form(kit.assertion(w.private, w.account_kid, f"urn:tessera:serviceaccount:{w.ns}:robot", w.endpoint)), 400, "invalid_grant", "belongs to another account"),
    ("assertion signed by another key", lambda w: kit.bearer_form(kit.assertion(keys.generate("ES256"), w.account_kid, w.subject, w.endpoint)), 400, "invalid_grant", "bad_signature"),
    ("assertion signed by an expired key", lambda w: kit.bearer_form(kit.assertion(w.expired, w.expired_kid, w.subject, w.endpoint)), 400, "invalid_grant", "expired at"),
    ("assertion signed by a disabled key", lambda w: kit.bearer_form(kit.assertion(w.disabled, w.disabled_kid, w.subject, w.endpoint)), 400, "invalid_grant", "is disabled"),
    ("missing assertion", lambda w: {"grant_type": exchange.JWT_BEARER}, 400, "invalid_request", "assertion is missing"),
    ("oversized body", lambda w: {**kit.exchange_form(w.k8s_token), "padding": "x" * 20000}, 413, "invalid_request", "larger than"),
    ("non-ASCII body", lambda w: b"grant_type=\xff\xfe", 400, "invalid_request", "not a form"),
]  # fmt: skip


@pytest.fixture(scope="module")
def world(issuer_stack: IssuerStack) -> World:
    ns = harness.create_namespace(issuer_stack.cluster, "bad")
    return World(issuer_stack, ns)


@pytest.mark.parametrize(("case", "form", "status", "error", "says"), CASES, ids=[c[0] for c in CASES])
def test_refused(world: World, case: str, form: Form, status: int, error: str, says: str) -> None:
    built = form(world)
    if isinstance(built, bytes):
        got_status, _, raw = world.stack.issuer.request(
            "POST", "/token", built, {"Content-Type": "application/x-www-form-urlencoded"}
        )
        answer = json.loads(raw)
    else:
        got_status, answer = world.stack.issuer.token(built)
    assert (got_status, answer.get("error")) == (status, error), answer
    assert says in answer["error_description"], answer


def test_other_methods_and_content_types(world: World) -> None:
    issuer = world.stack.issuer
    status, headers, raw = issuer.request("GET", "/token")
    assert (status, json.loads(raw)["error"], headers["allow"]) == (405, "invalid_request", "POST")
    body = json.dumps(kit.exchange_form(world.k8s_token)).encode()
    status, _, raw = issuer.request("POST", "/token", body, {"Content-Type": "application/json"})
    assert (status, json.loads(raw)["error"]) == (400, "invalid_request")
    status, headers, _ = issuer.request("POST", "/token", b"", {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400 and headers["cache-control"] == "no-store"


def test_nothing_crashed_and_no_secret_was_logged(world: World) -> None:
    issuer = world.stack.issuer
    for _, form, _, _, _ in CASES:  # every case once more, then read the log
        built = form(world)
        if not isinstance(built, bytes):  # an unexpected failure answers 503 server_error: below 500 means none
            assert issuer.token(built)[0] < 500
    assert issuer.request("GET", "/healthz")[0] == 200
    log = issuer.logs()
    assert "Traceback" not in log
    for secret in (world.k8s_token, world.used, world.provider_token(jti=uuid.uuid4().hex)):
        assert secret not in log and secret.split(".")[2] not in log
    leaked = leaks_private_key(keys.private_pem(world.private), log)
    assert not leaked, "the provider's private key is in the issuer log"
