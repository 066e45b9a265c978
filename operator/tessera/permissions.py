"""Two checks every Tessera consumer makes the same way, shared by the sidecar, the issuer and
``tessera can-i``: does a granted permission cover a needed one, is an address inside a range.

No imports beyond the standard library, so the sidecar may use it without the operator's layers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def permitted(granted: frozenset[str], needed: str) -> bool:
    """Whether any granted permission covers ``needed``: equal segment counts, ``*`` matches one segment."""
    if needed in granted:
        return True
    wanted = needed.split(".")
    return any(_covers(pattern, wanted) for pattern in granted if "*" in pattern)


def covering(granted: Iterable[str], needed: str) -> list[str]:
    """Every granted permission that covers ``needed``, sorted (for explaining an answer)."""
    wanted = needed.split(".")
    return sorted({p for p in granted if p == needed or ("*" in p and _covers(p, wanted))})


def _covers(pattern: str, wanted: list[str]) -> bool:
    segments = pattern.split(".")
    return len(segments) == len(wanted) and all(p in ("*", w) for p, w in zip(segments, wanted, strict=True))


def address_in(networks: Iterable[Network], address: str | None) -> bool:
    """Whether ``address`` (IPv4, IPv6 or IPv4-mapped IPv6) is inside any of ``networks``."""
    if address is None:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Parse CIDR ranges (host bits allowed); ValueError on a malformed one."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)
