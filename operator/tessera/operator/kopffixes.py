"""A fix for Kopf's start-up with many indexed objects, applied before Kopf runs.

Kopf holds every handler back until all indexes are filled. It does so with one ``ToggleSet``: a
toggle per object of an indexed resource, made when the object is first seen and dropped once it is
indexed, while every object's worker waits on the set's condition. Kopf 1.45 notifies all waiters
on every make and drop, so with N objects start-up costs about N x N task wake-ups: 11,500 objects
(10,000 RoleBindings, 1,000 accounts and their Secrets) kept the operator at 100 % CPU for over
five minutes before its first handler ran.

The set's aggregate state (``all`` or ``any`` of its toggles) is all that waiters wait for, so a
make or drop that leaves it unchanged need not wake anyone. :class:`FlipNotifyingToggleSet` wakes
waiters only when it flips; the waiters' own predicate is unchanged, so a spurious or missed
intermediate wake-up cannot change what they decide. Individual toggles still notify on their own.
The fix is applied only to the Kopf versions it was checked against.

The same class also remembers Kopf's "operator paused" set (the one built with ``any``), which is on
while Kopf peering has paused this replica: :func:`paused_set` lets the operator's own background
tasks pause with Kopf's handlers (Kopf offers no public way to ask).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the types only: at run time Kopf's private module loads only on a checked version
    from kopf._cogs.aiokits import aiotoggles

logger = logging.getLogger("tessera.operator")
CHECKED_VERSIONS = ("1.45.",)


_PAUSE_SETS: list[aiotoggles.ToggleSet] = []  # Kopf's "operator paused" ToggleSet, once the fix made it


@functools.cache
def toggle_set_class() -> type[aiotoggles.ToggleSet]:
    """Kopf's ``ToggleSet`` with flip-only notification. It imports Kopf's private module, so only
    :func:`apply` (after checking the version) and the tests call it."""
    from kopf._cogs.aiokits import aiotoggles

    class FlipNotifyingToggleSet(aiotoggles.ToggleSet):
        def __init__(self, fn: Callable[[Iterable[bool]], bool]) -> None:
            super().__init__(fn)
            if fn is any:  # Kopf builds exactly one: operator_paused
                _PAUSE_SETS.append(self)

        async def _change(self, change: Callable[[set[aiotoggles.Toggle]], None]) -> None:
            """Change the set of toggles; wake the waiters only if the combined state flipped."""
            async with self._condition:
                before = self.is_on()
                change(self._toggles)
                if self.is_on() != before:
                    self._condition.notify_all()

        async def make_toggle(self, __val: bool = False, *, name: str | None = None) -> aiotoggles.Toggle:
            toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
            await self._change(lambda toggles: toggles.add(toggle))
            return toggle

        async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
            await self.drop_toggles((toggle,))

        async def drop_toggles(self, toggles: Iterable[aiotoggles.Toggle]) -> None:
            await self._change(lambda held: held.difference_update(toggles))

    return FlipNotifyingToggleSet


def apply(version: str | None = None) -> bool:
    """Install the fix if this Kopf is one it was checked against; say whether it was installed."""
    version = version or importlib.metadata.version("kopf")
    if not version.startswith(CHECKED_VERSIONS):
        logger.warning("Kopf %s is not a version the start-up fix was checked with; running without it", version)
        return False
    from kopf._cogs.aiokits import aiotoggles

    aiotoggles.ToggleSet = toggle_set_class()  # type: ignore[misc]
    return True


def paused_set() -> aiotoggles.ToggleSet | None:
    """Kopf's "operator paused" toggle set of the running operator, if the fix is installed."""
    return _PAUSE_SETS[-1] if _PAUSE_SETS else None
