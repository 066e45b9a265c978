"""How a replica picks its Kopf peering priority: the earlier it started, the higher, never a tie."""

from __future__ import annotations

from tessera.operator import runner


def test_an_older_replica_outranks_a_newer_one_and_none_tie() -> None:
    started = 1_796_000_000_000_000_000  # ns
    older = runner.priority(None, "tessera", started)
    newer = runner.priority(None, "tessera", started + 1_000)  # one microsecond later
    assert older > newer > 0
    assert older < 2**63  # an int64 in the peering object
    assert runner.priority(7, "tessera", started) == 7  # given explicitly
    assert runner.priority(None, None, started) == 0  # standalone
