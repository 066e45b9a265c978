"""The start-up fix for Kopf's index readiness: waiters wake when the set flips, not on every toggle."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from tessera.operator import kopffixes


def test_waiters_wake_once_when_the_last_toggle_goes_not_on_every_change() -> None:
    async def scenario() -> tuple[int, bool, bool]:
        toggles = kopffixes.FlipNotifyingToggleSet(all)
        made = [await toggles.make_toggle(name=f"object-{i}") for i in range(200)]
        wakeups = 0
        original = toggles._condition.notify_all

        def counting() -> None:
            nonlocal wakeups
            wakeups += 1
            original()

        toggles._condition.notify_all = counting  # type: ignore[method-assign]
        waiters = [asyncio.create_task(toggles.wait_for(True)) for _ in range(50)]
        await asyncio.sleep(0)
        for toggle in made[:-1]:
            await toggles.drop_toggle(toggle)
        await asyncio.sleep(0)
        early = any(w.done() for w in waiters)
        await toggles.drop_toggle(made[-1])
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
        return wakeups, early, all(w.done() for w in waiters)

    wakeups, early, done = asyncio.run(scenario())
    assert not early and done
    assert wakeups == 1  # Kopf 1.45's own ToggleSet notifies 200 times here


def test_a_new_toggle_after_readiness_flips_it_back_and_wakes_waiters_for_off() -> None:
    async def scenario() -> bool:
        toggles = kopffixes.FlipNotifyingToggleSet(all)
        assert toggles.is_on()  # empty: all() of nothing
        waiter = asyncio.create_task(toggles.wait_for(False))
        await asyncio.sleep(0)
        await toggles.make_toggle(name="late")
        await asyncio.wait_for(waiter, 5)
        return toggles.is_off()

    assert asyncio.run(scenario())


def test_the_fix_is_applied_only_to_checked_versions() -> None:
    original = aiotoggles.ToggleSet
    try:
        assert not kopffixes.apply("2.0.0") and aiotoggles.ToggleSet is original
        assert kopffixes.apply() and aiotoggles.ToggleSet is kopffixes.FlipNotifyingToggleSet
    finally:
        aiotoggles.ToggleSet = original  # type: ignore[misc]
