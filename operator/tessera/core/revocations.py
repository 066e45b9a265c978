"""Revocations: a subject's tokens issued before a moment are refused everywhere, at once.

Disabling or deleting a ServiceAccount stops new tokens, but tokens already handed out would live
until they expire (the seeds' weakness of plain JWT service accounts). So each trust bundle carries
``subject -> notBefore``: a verifier refuses any token of that subject issued (``iat``) before it.
``notBefore`` is the revocation moment rounded up to the next whole second, so every token issued
up to then is covered, and a token issued after re-enabling (never before ``notBefore``) is not.
An entry is pruned once no token it covers can still be alive.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Mapping

from tessera import errors

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Revocation:
    subject: str
    not_before: datetime.datetime  # tokens with iat before this are refused
    prune_after: datetime.datetime  # by then every covered token has expired (with leeway)


Revocations = Mapping[str, Revocation]


def _ceil_second(moment: datetime.datetime) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(math.ceil(moment.timestamp()), datetime.UTC)


def revoke(
    current: Revocations,
    subject: str,
    now: datetime.datetime,
    alive_until: datetime.datetime,
    leeway: datetime.timedelta,
    last_issued: datetime.datetime | None = None,
) -> dict[str, Revocation]:
    """Add (or tighten) the revocation of ``subject``; ``alive_until`` is when its last token expires,
    ``leeway`` how long past that verifiers may still accept it, ``last_issued`` the ``iat`` of its
    newest token (which may be up to a second ahead of ``now`` right after a re-enable)."""
    not_before = _ceil_second(now)
    if last_issued is not None:
        not_before = max(not_before, _ceil_second(last_issued + datetime.timedelta(seconds=1)))
    prune_after = max(alive_until, not_before) + leeway
    previous = current.get(subject)
    if previous is not None:
        not_before = max(not_before, previous.not_before)
        prune_after = max(prune_after, previous.prune_after)
    return {**current, subject: Revocation(subject, not_before, prune_after)}


def merged(*stores: Revocations) -> dict[str, Revocation]:
    """Every revocation any of ``stores`` holds, each at its strictest (latest notBefore, latest prune):
    restoring a damaged store from memory, or memory from what survived, never loses one."""
    found: dict[str, Revocation] = {}
    for store in stores:
        for subject, entry in store.items():
            previous = found.get(subject)
            if previous is None:
                found[subject] = entry
            else:
                not_before = max(previous.not_before, entry.not_before)
                found[subject] = Revocation(subject, not_before, max(previous.prune_after, entry.prune_after))
    return found


def from_bundle(
    entries: object, max_token_ttl: datetime.timedelta, leeway: datetime.timedelta
) -> dict[str, Revocation]:
    """The revocations a trust bundle publishes (``[{"sub", "notBefore"}]``), for when the store itself
    was lost: a bundle does not carry when each may be pruned, so it is kept until the longest-lived
    token issued before its notBefore has expired. Entries that do not parse are skipped."""
    found: dict[str, Revocation] = {}
    for entry in entries if isinstance(entries, list) else []:
        try:
            subject, seconds = str(entry["sub"]), int(entry["notBefore"])
        except (KeyError, TypeError, ValueError):
            continue
        not_before = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
        found = merged(found, {subject: Revocation(subject, not_before, not_before + max_token_ttl + leeway)})
    return found


def pruned(current: Revocations, now: datetime.datetime) -> dict[str, Revocation]:
    """Only the revocations that still cover a token that may be alive."""
    return {s: r for s, r in current.items() if r.prune_after > now}


def not_before(current: Revocations, subject: str) -> datetime.datetime | None:
    entry = current.get(subject)
    return entry.not_before if entry is not None else None


def dumps(current: Revocations) -> str:
    entries = [
        {"subject": r.subject, "notBefore": r.not_before.isoformat(), "pruneAfter": r.prune_after.isoformat()}
        for r in sorted(current.values(), key=lambda r: r.subject)
    ]
    return json.dumps({"version": FORMAT_VERSION, "revocations": entries}, sort_keys=True, separators=(",", ":"))


def loads(text: str) -> dict[str, Revocation]:
    try:
        entries = json.loads(text)["revocations"]
        parsed = [
            Revocation(
                e["subject"],
                datetime.datetime.fromisoformat(e["notBefore"]),
                datetime.datetime.fromisoformat(e["pruneAfter"]),
            )
            for e in entries
        ]
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.ConfigError(f"the stored revocations are malformed ({type(exc).__name__})") from exc
    return {r.subject: r for r in parsed}
