"""Sharding by namespace: one owner each, balanced, and a new shard takes namespaces only for itself."""

from __future__ import annotations

import collections

import pytest

from tessera import errors
from tessera.core import sharding

NAMESPACES = [f"tenant-{i:05d}" for i in range(20_000)]


def test_every_namespace_has_exactly_one_owner_among_the_shards() -> None:
    shards = [sharding.Shard(i, 4) for i in range(4)]
    for namespace in NAMESPACES[:2000]:
        assert sum(shard.owns(namespace) for shard in shards) == 1


@pytest.mark.parametrize("count", [2, 3, 5, 8])
def test_namespaces_spread_evenly(count: int) -> None:
    load = collections.Counter(sharding.owner(ns, count) for ns in NAMESPACES)
    assert set(load) == set(range(count))
    assert max(load.values()) / (len(NAMESPACES) / count) < 1.05


def test_a_new_shard_takes_namespaces_only_for_itself() -> None:
    before = {ns: sharding.owner(ns, 4) for ns in NAMESPACES}
    after = {ns: sharding.owner(ns, 5) for ns in NAMESPACES}
    moved = [ns for ns in NAMESPACES if before[ns] != after[ns]]
    assert all(after[ns] == 4 for ns in moved)  # never from one old shard to another
    assert 0.17 < len(moved) / len(NAMESPACES) < 0.23  # about 1/5


@pytest.mark.parametrize(("text", "expected"), [("0/1", (0, 1)), ("2/3", (2, 3))])
def test_a_shard_is_written_i_of_n(text: str, expected: tuple[int, int]) -> None:
    shard = sharding.Shard.parse(text)
    assert (shard.index, shard.count) == expected


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "0/0", ""])
def test_a_malformed_shard_is_refused(text: str) -> None:
    with pytest.raises(errors.ConfigError):
        sharding.Shard.parse(text)
