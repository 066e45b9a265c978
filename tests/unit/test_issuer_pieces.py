"""Small pure pieces around the issuer: can-i's explanation, permission matching, JWT verification's
reason codes, Hydra's build module and the control plane's extra API server arguments."""

from __future__ import annotations

import time

import jwt
import pytest

from tessera import permissions
from tessera.api import role as role_api
from tessera.api import rolebinding as rb_api
from tessera.core import access
from tessera.crypto import keys
from tessera.crypto import tokens as crypto_tokens
from tessera.envtest import hydra

ALICE = "user:https://idp.example.com#alice"


def binding(name: str, role: str, members: list[str], namespace: str = "shop") -> rb_api.RoleBinding:
    assignments = [{"member": m, "scope": f"namespaces/{namespace}"} for m in members]
    body = {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "roleRef": {"name": role},
            "members": [{"user": {"issuer": "https://idp.example.com", "subject": "x"}}],
        },
        "status": {"memberAssignments": assignments},
    }
    return rb_api.RoleBinding.parse(body)


def role(name: str, granted: list[str]) -> role_api.Role:
    return role_api.Role.parse({"metadata": {"name": name, "namespace": "shop"}, "spec": {"permissions": granted}})


def test_can_i_names_the_bindings_and_answers_from_the_bundle() -> None:
    roles = {"reader": role("reader", ["shop.orders.read", "shop.*.list"]), "admin": role("admin", ["shop.orders.*"])}
    bindings = [binding("b2", "admin", [ALICE]), binding("b1", "reader", [ALICE]), binding("b3", "reader", ["other"])]
    because = access.bindings_granting(ALICE, "shop.orders.read", "shop", bindings, roles)
    assert [(b.binding, b.role, b.matched) for b in because] == [
        ("shop/b1", "reader", ("shop.orders.read",)),
        ("shop/b2", "admin", ("shop.orders.*",)),
    ]
    yes = access.answer(ALICE, "shop.orders.read", "shop", {ALICE: ["shop.orders.*"]}, because)
    assert yes.allowed and yes.lines(ALICE, "shop.orders.read", "shop")[0].startswith("yes: ")
    # The bundle is what the sidecar reads: a grant the bindings show but the bundle lacks is a no.
    assert not access.answer(ALICE, "shop.orders.read", "shop", {}, because).allowed
    assert access.answer(ALICE, "shop.orders.read", "shop", None, because).allowed  # no bundle: the bindings
    assert not access.answer(ALICE, "shop.orders.read", "shop", None, ()).allowed


def test_covering_lists_every_matching_permission() -> None:
    granted = ["shop.orders.read", "shop.*.read", "shop.orders.*", "shop.orders", "other.orders.read"]
    assert permissions.covering(granted, "shop.orders.read") == ["shop.*.read", "shop.orders.*", "shop.orders.read"]
    assert permissions.permitted(frozenset(granted), "shop.items.read")
    assert not permissions.permitted(frozenset(granted), "shop.items.write")


def test_verify_maps_every_refusal_to_a_reason() -> None:
    private = keys.generate("ES256")
    now = int(time.time())
    good = {"iss": "https://i", "sub": "s", "aud": "a", "iat": now, "exp": now + 60}

    def reason(token: str, audiences: list[str] | None = None, key: keys.PublicKey | None = None) -> str:
        with pytest.raises(crypto_tokens.Rejected) as caught:
            crypto_tokens.verify(
                token, key or private.public_key(), issuer="https://i", audiences=audiences or ["a"], leeway=5
            )
        return caught.value.reason

    assert crypto_tokens.verify(
        jwt.encode(good, private, "ES256"), private.public_key(), issuer="https://i", audiences=["a"], leeway=5
    )
    assert reason(jwt.encode({**good, "exp": now - 60}, private, "ES256")) == "expired"
    assert reason(jwt.encode(good, private, "ES256"), ["b"]) == "wrong_audience"
    assert reason(jwt.encode({**good, "iss": "https://j"}, private, "ES256")) == "wrong_issuer"
    assert reason(jwt.encode({k: v for k, v in good.items() if k != "sub"}, private, "ES256")) == "missing_sub"
    assert reason(jwt.encode({**good, "nbf": now + 600}, private, "ES256")) == "not_yet_valid"
    assert reason(jwt.encode(good, keys.generate("ES256"), "ES256")) == "bad_signature"
    assert reason(jwt.encode(good, None, "none")) == "alg_key_mismatch"  # type: ignore[arg-type]
    assert reason(jwt.encode(good, b"k" * 32, "HS256")) == "alg_key_mismatch"
    assert reason(jwt.encode(good, private, "ES256", {"crit": ["x"]})) == "malformed_token"  # PyJWT refuses crit
    assert reason("a.b") == "malformed_token"


def test_hydra_build_copies_only_published_replacements() -> None:
    go_mod = (
        "module github.com/ory/hydra/v2\n\n"
        "replace github.com/ory/hydra-client-go/v2 => ./internal/httpclient\n\n"
        "replace github.com/gobuffalo/pop/v6 => github.com/ory/pop/v6 v6.2.1-0.20241121111754-e5dfc0f3344b\n"
    )
    assert hydra.published_replacements(go_mod) == [
        "replace github.com/gobuffalo/pop/v6 => github.com/ory/pop/v6 v6.2.1-0.20241121111754-e5dfc0f3344b"
    ]
