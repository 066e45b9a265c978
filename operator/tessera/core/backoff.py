"""How long to wait before retrying a failed reconcile: exponential, capped, spread per object.

The n-th failure in a row waits ``base * 2**(n-1)`` seconds, at most ``cap``, shortened by up to
``jitter`` of itself by a hash of the object and n, so objects failing together (an RBAC rule taken
away, a webhook down) do not retry together. Deterministic: the same object and count give the
same delay.
"""

from __future__ import annotations

import hashlib

BASE_SECONDS = 0.5
CAP_SECONDS = 30.0
JITTER = 0.2


def retry_delay(
    failures: int, seed: str, base: float = BASE_SECONDS, cap: float = CAP_SECONDS, jitter: float = JITTER
) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 for the first) of the object ``seed``."""
    if failures < 1:
        return 0.0
    full = min(cap, base * 2.0 ** min(failures - 1, 62))
    spread = int.from_bytes(hashlib.sha256(f"{seed}/{failures}".encode()).digest()[:4], "big") / 2**32
    return full * (1.0 - jitter * spread)
