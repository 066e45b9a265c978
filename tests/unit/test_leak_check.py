"""The check the log tests use for leaked private keys finds a key in any form a log could carry it,
and is not satisfied by what every key of its kind shares."""

from __future__ import annotations

import json

import pytest

from tessera.crypto import keys
from tests.resources import leaks_private_key, private_key_material


@pytest.mark.parametrize("algorithm", keys.ALGORITHMS)
def test_a_logged_key_is_found_in_any_form(algorithm: keys.Algorithm) -> None:
    key = keys.generate(algorithm)
    pem = keys.private_pem(key)
    hex_form, jwk_d, _ = private_key_material(pem)[:3]
    assert leaks_private_key(pem, f"level=ERROR msg=could not store\n{pem}\nnext line")
    assert leaks_private_key(pem, f"level=ERROR msg=could not store key={pem!r}")
    assert leaks_private_key(pem, json.dumps({"key": pem}))
    assert leaks_private_key(pem, json.dumps({"kty": "EC", "d": jwk_d}))
    assert leaks_private_key(pem, f"scalar 0x{hex_form}")
    assert leaks_private_key(pem, repr(pem.splitlines()[1:-1])), "PEM lines quoted one by one"


@pytest.mark.parametrize("algorithm", keys.ALGORITHMS)
def test_what_every_key_of_its_kind_shares_is_no_leak(algorithm: keys.Algorithm) -> None:
    key = keys.generate(algorithm)
    pem = keys.private_pem(key)
    assert not leaks_private_key(pem, keys.private_pem(keys.generate(algorithm))), "another key counted"
    assert not leaks_private_key(pem, keys.public_pem(key.public_key())), "the public key counted"
    assert not leaks_private_key(pem, "-----BEGIN PRIVATE KEY-----\n" + pem.splitlines()[1][:40])
