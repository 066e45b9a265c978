"""How a replica picks its Kopf peering priority: the earlier it started, the higher, never a tie."""

from __future__ import annotations

from tessera.operator import kopffixes, runner


def test_an_older_replica_outranks_a_newer_one_and_none_tie() -> None:
    started = 1_796_000_000_000_000_000  # ns
    older = runner.priority(None, "tessera", started)
    newer = runner.priority(None, "tessera", started + 1_000)  # one microsecond later
    assert older > newer > 0
    assert older < 2**63  # an int64 in the peering object
    assert runner.priority(7, "tessera", started) == 7  # given explicitly
    assert runner.priority(None, None, started) == 0  # standalone


def test_peering_is_refused_without_the_pause_hook_and_allowed_with_it() -> None:
    refusal = runner.peering_refusal("tessera", fix_installed=False, kopf_version="1.46.0")
    assert refusal is not None and "1.46.0" in refusal and "--peering" in refusal
    assert runner.peering_refusal("tessera", fix_installed=True, kopf_version="1.45.2") is None
    assert (
        runner.peering_refusal(None, fix_installed=False, kopf_version="1.46.0") is None
    )  # one replica: nothing to pause


def test_the_fix_installs_only_on_a_checked_kopf() -> None:
    assert not kopffixes.apply("1.46.0")
