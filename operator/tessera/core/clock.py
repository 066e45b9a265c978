"""The one clock: every decision takes ``now`` as an argument; the I/O edges read it here."""

from __future__ import annotations

import datetime


def utcnow() -> datetime.datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.datetime.now(datetime.UTC)
