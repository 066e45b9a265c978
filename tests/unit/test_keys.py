"""Keys: JWK round trips, RFC 7638 thumbprints, strength checks, refusal of private JWK members."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tessera import errors
from tessera.api import serviceaccountkey
from tessera.crypto import keys


def test_rfc7638_thumbprint_matches_the_rfc_example() -> None:
    # RFC 7638 section 3.1: the example RSA key and its published thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"  # noqa: E501
        "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1"
        "n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    key = keys.load_jwk(jwk)
    assert keys.thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize("algorithm", keys.ALGORITHMS)
def test_generated_keys_round_trip_through_pem_and_jwk(algorithm: keys.Algorithm) -> None:
    private = keys.generate(algorithm)
    public = keys.public_of(private)
    assert keys.algorithm_for(public) == algorithm
    reloaded = keys.load_private_pem(keys.private_pem(private))
    assert keys.thumbprint(keys.public_of(reloaded)) == keys.thumbprint(public)
    jwk = keys.public_jwk(public)
    assert jwk["kid"] == keys.thumbprint(public) and jwk["alg"] == algorithm and jwk["use"] == "sig"
    assert keys.thumbprint(keys.load_jwk(jwk)) == jwk["kid"]
    assert keys.thumbprint(keys.load_public_pem(keys.public_pem(public))) == jwk["kid"]
    assert keys.fingerprint(public).startswith("SHA256:")


def test_weak_rsa_and_foreign_curves_are_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the point)
    with pytest.raises(errors.KeyMaterialError, match="too weak"):
        keys.check_strength(weak.public_key())
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(errors.KeyMaterialError, match="not supported"):
        keys.check_strength(p384.public_key())


def test_a_jwk_with_private_members_is_refused() -> None:
    jwk = keys.public_jwk(keys.public_of(keys.generate("ES256")))
    with pytest.raises(errors.KeyMaterialError, match="private key members"):
        keys.load_jwk({**jwk, "d": "AAAA"})


@pytest.mark.parametrize("pem", ["", "not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
def test_unreadable_pem_gives_a_clear_error_without_echoing_it(pem: str) -> None:
    with pytest.raises(errors.KeyMaterialError) as caught:
        keys.load_public_pem(pem)
    assert pem not in str(caught.value) or pem == ""


def test_the_crd_refuses_the_same_private_members_the_loader_does() -> None:
    # tessera.api may not import tessera.crypto (sibling layers): the two lists must agree.
    assert serviceaccountkey.PRIVATE_JWK_MEMBERS == keys.PRIVATE_JWK_MEMBERS
