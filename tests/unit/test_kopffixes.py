"""The start-up fix for Kopf's index readiness: waiters wake when the set flips, not on every toggle."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from tessera.operator import kopffixes


async def parked(toggles: aiotoggles.ToggleSet, state: bool, count: int) -> list[asyncio.Task[None]]:
    """``count`` tasks waiting on ``toggles`` for ``state``, each already parked on the condition.

    A task announces itself and then runs into the condition's wait without yielding before it, so
    once the last has announced, all of them are waiting (no sleep needed)."""
    ready, started = asyncio.Event(), 0

    async def waiter() -> None:
        nonlocal started
        started += 1
        if started == count:
            ready.set()
        await toggles.wait_for(state)

    tasks = [asyncio.create_task(waiter()) for _ in range(count)]
    await asyncio.wait_for(ready.wait(), 5)
    return tasks


def test_waiters_wake_once_when_the_last_toggle_goes_not_on_every_change() -> None:
    async def scenario() -> tuple[int, bool, bool]:
        toggles = kopffixes.toggle_set_class()(all)
        made = [await toggles.make_toggle(name=f"object-{i}") for i in range(200)]
        wakeups = 0
        original = toggles._condition.notify_all

        def counting() -> None:
            nonlocal wakeups
            wakeups += 1
            original()

        toggles._condition.notify_all = counting  # type: ignore[method-assign]
        waiters = await parked(toggles, True, 50)
        for toggle in made[:-1]:
            await toggles.drop_toggle(toggle)
        pending = list(toggles._condition._waiters)
        early = len(pending) != 50 or any(f.done() for f in pending)  # a notify resolves these futures
        await toggles.drop_toggle(made[-1])
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
        return wakeups, early, all(w.done() for w in waiters)

    wakeups, early, done = asyncio.run(scenario())
    assert not early and done
    assert wakeups == 1  # Kopf 1.45's own ToggleSet notifies 200 times here


def test_a_new_toggle_after_readiness_flips_it_back_and_wakes_waiters_for_off() -> None:
    async def scenario() -> bool:
        toggles = kopffixes.toggle_set_class()(all)
        assert toggles.is_on()  # empty: all() of nothing
        [waiter] = await parked(toggles, False, 1)
        await toggles.make_toggle(name="late")
        await asyncio.wait_for(waiter, 5)
        return toggles.is_off()

    assert asyncio.run(scenario())


def test_the_fix_is_applied_only_to_checked_versions() -> None:
    original = aiotoggles.ToggleSet
    try:
        assert not kopffixes.apply("2.0.0") and aiotoggles.ToggleSet is original
        assert kopffixes.apply() and aiotoggles.ToggleSet is kopffixes.toggle_set_class()
    finally:
        aiotoggles.ToggleSet = original  # type: ignore[misc]
