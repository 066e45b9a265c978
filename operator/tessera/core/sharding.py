"""Which operator shard owns a namespace, for running several operators over one cluster (docs/scaling.md).

Rendezvous (highest random weight) hashing: every shard scores every namespace, the highest score
owns it. Each namespace has exactly one owner whatever the order anything is asked in, shards agree
without talking to each other, and going from n to n + 1 shards moves only the namespaces the new
shard wins (about 1 / (n + 1) of them), never one between two old shards.
"""

from __future__ import annotations

import dataclasses
import hashlib

from tessera import errors


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/n"`` (0 <= i < n); ``"0/1"`` is the one operator that owns everything."""
        index, sep, count = text.partition("/")
        try:
            shard = cls(int(index), int(count))
        except ValueError:
            raise errors.ConfigError(f"a shard is i/n, such as 0/3, not {text!r}") from None
        if not sep or not 0 <= shard.index < shard.count:
            raise errors.ConfigError(f"a shard is i/n with 0 <= i < n, not {text!r}")
        return shard

    def owns(self, namespace: str) -> bool:
        return owner(namespace, self.count) == self.index


def _score(namespace: str, shard: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{shard}\0{namespace}".encode()).digest()[:8], "big")


def owner(namespace: str, count: int) -> int:
    """The shard (0 .. count - 1) that owns ``namespace``."""
    return max(range(count), key=lambda shard: _score(namespace, shard))
