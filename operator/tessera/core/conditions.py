"""metav1.Condition bookkeeping: set one condition, keep the transition time when nothing flipped."""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from tessera.api import meta


def set_condition(
    existing: Sequence[meta.Condition],
    new: meta.Condition,
    now: datetime.datetime,
) -> list[meta.Condition]:
    """Replace the condition of ``new.type``; its transition time moves only when its status changes."""
    previous = next((c for c in existing if c.type == new.type), None)
    moved = previous is None or previous.status != new.status or previous.last_transition_time is None
    stamp = now if moved else previous.last_transition_time  # type: ignore[union-attr]
    updated = new.model_copy(update={"last_transition_time": stamp.replace(microsecond=0) if stamp else None})
    others = [c for c in existing if c.type != new.type]
    return sorted([*others, updated], key=lambda c: c.type)


def ready(ok: bool, reason: str, message: str, generation: int | None) -> meta.Condition:
    return meta.Condition(
        type="Ready",
        status="True" if ok else "False",
        reason=reason,
        message=message,
        observed_generation=generation,
    )
