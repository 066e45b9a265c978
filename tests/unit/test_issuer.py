"""Issuer key sets: serialisation round trip, JWKS content, signing-key choice, malformed input."""

from __future__ import annotations

import datetime

import pytest

from tessera import errors
from tessera.core import issuer

NOW = datetime.datetime(2026, 11, 22, tzinfo=datetime.UTC)


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA", "RS256"])
def test_keyset_round_trips_and_publishes_only_public_members(algorithm: str) -> None:
    keyset = issuer.initial(algorithm, NOW)  # type: ignore[arg-type]
    again = issuer.loads(issuer.dumps(keyset))
    assert [k.kid for k in again] == [k.kid for k in keyset]
    assert issuer.dumps(again) == issuer.dumps(keyset)
    [jwk] = issuer.jwks(again)["keys"]
    assert jwk["alg"] == algorithm and "d" not in jwk


def test_signing_key_is_the_newest_allowed_to_sign() -> None:
    old = issuer.initial("ES256", NOW)[0]
    new = issuer.IssuerKey.generate("ES256", NOW, NOW + datetime.timedelta(hours=1))
    assert issuer.signing_key((old, new), NOW).kid == old.kid
    assert issuer.signing_key((old, new), NOW + datetime.timedelta(hours=1)).kid == new.kid


@pytest.mark.parametrize("text", ["", "{}", '{"keys": []}', '{"keys": [{"kid": "x"}]}', "[1]"])
def test_malformed_keysets_are_refused_clearly(text: str) -> None:
    with pytest.raises(errors.KeyMaterialError, match="issuer key set"):
        issuer.loads(text)
