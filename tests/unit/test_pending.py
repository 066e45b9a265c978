"""Own writes awaiting their echo: trusted until the watch shows them, handed back when it never does."""

from __future__ import annotations

from tessera.operator import state


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_write_is_trusted_until_the_watch_shows_it() -> None:
    pending: state.Pending[str, int] = state.Pending(Clock())
    pending.wrote("a", "7", 1)
    assert pending.get("a") == (True, 1)
    assert not pending.seen("a", "6")  # an older version: still ours to trust
    assert pending.get("a") == (True, 1)
    assert pending.seen("a", "7")  # the echo: nothing new to look at
    assert pending.get("a") == (False, None)
    assert pending.expired() == []


def test_a_write_whose_echo_came_first_is_never_pending() -> None:
    pending: state.Pending[str, int] = state.Pending(Clock())
    pending.seen("a", "7")
    pending.wrote("a", "7", 1)
    assert pending.get("a") == (False, None)


def test_a_deletion_supersedes_a_write() -> None:
    pending: state.Pending[str, int] = state.Pending(Clock())
    pending.wrote("a", "7", 1)
    assert not pending.seen("a", None, gone=True)
    assert pending.get("a") == (False, None)
    assert pending.expired() == []


def test_a_write_whose_echo_never_came_is_handed_out_once_after_its_time() -> None:
    clock = Clock()
    pending: state.Pending[str, int] = state.Pending(clock)
    pending.wrote("lost", "7", 1)
    pending.wrote("echoed", "3", 2)
    clock.now += state.PENDING_SECONDS - 0.1
    assert pending.expired() == []
    assert pending.get("lost") == (True, 1)
    pending.seen("echoed", "3")
    clock.now += 0.2
    assert pending.get("lost") == (False, None)  # the index is the truth again
    assert pending.expired() == ["lost"]  # to be looked at again: the event may have been lost
    assert pending.expired() == []  # once
