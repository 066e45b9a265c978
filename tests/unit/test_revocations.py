"""Revocations: what notBefore covers, merging, pruning once nothing covered can be alive, storage."""

from __future__ import annotations

import datetime

import pytest

from tessera import errors
from tessera.core import revocations

NOW = datetime.datetime(2026, 11, 22, 12, 0, 0, 400000, tzinfo=datetime.UTC)
LEEWAY = datetime.timedelta(seconds=60)
SUB = "urn:tessera:serviceaccount:shop:billing"


def test_not_before_is_the_next_whole_second_so_every_earlier_token_is_covered() -> None:
    revoked = revocations.revoke({}, SUB, NOW, NOW + datetime.timedelta(minutes=15), LEEWAY)
    entry = revoked[SUB]
    assert entry.not_before == datetime.datetime(2026, 11, 22, 12, 0, 1, tzinfo=datetime.UTC)
    assert int(NOW.timestamp()) < int(entry.not_before.timestamp())  # a token issued this second is refused
    assert entry.prune_after == NOW + datetime.timedelta(minutes=15) + LEEWAY


def test_revoking_again_only_tightens() -> None:
    first = revocations.revoke({}, SUB, NOW, NOW + datetime.timedelta(hours=2), LEEWAY)
    later = NOW + datetime.timedelta(minutes=10)
    second = revocations.revoke(first, SUB, later, later + datetime.timedelta(minutes=1), LEEWAY)
    assert second[SUB].not_before > first[SUB].not_before
    assert second[SUB].prune_after == first[SUB].prune_after  # the longer-lived token is still covered


def test_pruned_once_no_covered_token_can_be_alive() -> None:
    revoked = revocations.revoke({}, SUB, NOW, NOW + datetime.timedelta(minutes=1), LEEWAY)
    prune_at = revoked[SUB].prune_after
    assert revocations.pruned(revoked, prune_at - datetime.timedelta(seconds=1)) == revoked
    assert revocations.pruned(revoked, prune_at) == {}


def test_storage_round_trips_and_refuses_garbage() -> None:
    revoked = revocations.revoke({}, SUB, NOW, NOW, LEEWAY)
    assert revocations.loads(revocations.dumps(revoked)) == revoked
    with pytest.raises(errors.ConfigError, match="revocations are malformed"):
        revocations.loads('{"revocations": [{"subject": 1}]}')


def test_a_token_issued_just_ahead_of_now_is_still_covered() -> None:
    # Right after a re-enable the newest token's iat may be up to a second ahead of the clock.
    ahead = NOW.replace(microsecond=0) + datetime.timedelta(seconds=1)
    revoked = revocations.revoke({}, SUB, NOW, NOW + datetime.timedelta(minutes=1), LEEWAY, last_issued=ahead)
    assert int(revoked[SUB].not_before.timestamp()) > int(ahead.timestamp())
    exact = NOW.replace(microsecond=0)  # revoked at the very second a token was issued
    again = revocations.revoke({}, SUB, exact, exact, LEEWAY, last_issued=exact)
    assert int(again[SUB].not_before.timestamp()) > int(exact.timestamp())
