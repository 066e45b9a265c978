"""An identity provider's keys as the issuer fetches them: a token naming a kid it does not know makes
it fetch again, but a storm of such tokens costs the provider at most one fetch per interval (3 s in
these tests, TESSERA_PROVIDER_REFETCH_SECONDS; 60 s by default), counted at a real HTTPS JWKS server."""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt
import pytest

from tessera.crypto import keys
from tests import issuer_kit, waiting
from tests.integration import test_issuer as kit
from tests.integration.conftest import REFETCH_SECONDS, IssuerStack

pytestmark = pytest.mark.integration
AUDIENCE = "tessera-exchange"


def signed(provider: issuer_kit.CountingJwks, key: keys.PrivateKey, kid: str) -> str:
    now = int(time.time())
    claims = {"iss": provider.issuer, "sub": "carol", "aud": AUDIENCE, "iat": now, "exp": now + 300}
    return jwt.encode(claims, key, "ES256", {"kid": kid})


def jwks(*pairs: tuple[keys.PrivateKey, str]) -> dict[str, Any]:
    return {"keys": [keys.public_jwk(key.public_key(), kid) for key, kid in pairs]}


def test_unknown_kids_refetch_at_most_once_per_interval(issuer_stack: IssuerStack, kit_ns: str) -> None:
    stack = issuer_stack
    first, second = keys.generate("ES256"), keys.generate("ES256")
    with issuer_kit.CountingJwks(stack.issuer.tls, jwks((first, "first"))) as provider:
        spec = {"issuer": provider.issuer, "audiences": [AUDIENCE], "caBundle": stack.issuer.tls.ca.read_text()}
        kit.apply(
            stack,
            {
                "apiVersion": "iam.tessera.dev/v1alpha1",
                "kind": "IdentityProvider",
                "metadata": {"name": f"count-{kit_ns}"},
                "spec": spec,
            },
        )
        waiting.until(
            lambda: stack.issuer.token(kit.exchange_form(signed(provider, first, "first")))[0] == 200,
            what="a first exchange",
        )

        # A storm of made-up kids: all refused, and the provider hears about it at most once per interval.
        before, started = provider.requests, time.monotonic()
        stranger = keys.generate("ES256")
        for _ in range(60):
            status, answer = stack.issuer.token(kit.exchange_form(signed(provider, stranger, uuid.uuid4().hex)))
            assert (status, answer["error"]) == (400, "invalid_grant") and "no signing key" in answer[
                "error_description"
            ]
        fetches_allowed = int((time.monotonic() - started) / REFETCH_SECONDS) + 1
        assert provider.requests - before <= 2 * fetches_allowed  # discovery + JWKS per fetch

        # The provider rotates in a new key: its first token is exchanged once the interval allows a fetch.
        provider.jwks = jwks((first, "first"), (second, "second"))
        rotated = signed(provider, second, "second")
        waiting.until(
            lambda: stack.issuer.token(kit.exchange_form(rotated))[0] == 200,
            timeout=3 * REFETCH_SECONDS + 5,
            what="the new kid",
        )
