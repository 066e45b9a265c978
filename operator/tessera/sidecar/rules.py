"""Which permission a request needs: rules matching HTTP method + path, first match wins, default deny.

A rules file (YAML or JSON, mounted from a ConfigMap)::

    rules:
      - path: /healthz
        allow: anyone               # no token needed
      - methods: [GET, HEAD]
        path: /orders/**
        permission: shop.orders.read
      - methods: [POST]
        path: /orders/*/cancel
        permission: shop.orders.write
      - path: /me
        allow: authenticated        # any caller with a valid token

Path patterns are split on ``/``: ``*`` matches one whole segment, a final ``**`` matches any rest
(including nothing). Methods default to any. A request matching no rule is refused.

Paths are checked before matching (:func:`canonical_path`): percent-escapes are decoded once, and a
path that a server could read differently from the rules is refused rather than guessed at: empty
or dot segments (``//``, ``/./``, ``/../`` in any encoding), encoded ``/`` or ``\\``, backslashes,
control characters, invalid escapes. Matching is case-sensitive, and a request that would match a
different rule if case were ignored (``/ADMIN`` against ``/admin/**``) is refused as ambiguous, so a
case-insensitive app behind the sidecar cannot be reached around a rule.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote_to_bytes

import yaml

from tessera import errors

Access = Literal["permission", "authenticated", "anyone"]
_METHOD = re.compile(r"[A-Z]+")
_PERMISSION = re.compile(r"[a-z0-9]([a-z0-9_-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9_-]*[a-z0-9])?){2,}")
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SEGMENT = re.compile(r"[^/]+")


class RulesError(errors.ConfigError):
    """The rules file cannot be used; the message says which rule and why."""


@dataclasses.dataclass(frozen=True)
class Rule:
    index: int
    methods: frozenset[str] | None  # None: any method
    pattern: str
    access: Access
    permission: str | None = None
    regex: re.Pattern[str] = dataclasses.field(default=re.compile(""), compare=False, repr=False)
    folded: re.Pattern[str] = dataclasses.field(default=re.compile(""), compare=False, repr=False)

    def matches(self, method: str, path: str) -> bool:
        return (self.methods is None or method in self.methods) and self.regex.fullmatch(path) is not None

    def matches_folded(self, method: str, path: str) -> bool:
        return (self.methods is None or method in self.methods) and self.folded.fullmatch(path) is not None


def _compile(pattern: str, where: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    if not pattern.startswith("/"):
        raise RulesError(f"{where}: path must start with /")
    segments = pattern[1:].split("/") if pattern != "/" else []
    body = "" if segments else "/"
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**" and last:
            body += "(?:/[^/]+)*/?"  # any further segments, or none; a trailing slash too
        elif segment == "*":
            body += "/[^/]+"
        elif segment == "" and last:
            body += "/"  # a pattern ending in / matches only paths ending in /
        elif segment in ("", ".", "..") or "*" in segment:
            raise RulesError(f"{where}: segment {segment!r} must be a name, * or a final **")
        else:
            body += "/" + re.escape(segment)
    return re.compile(body), re.compile(body, re.IGNORECASE)


def _rule(index: int, entry: Any) -> Rule:
    where = f"rules[{index}]"
    if not isinstance(entry, dict):
        raise RulesError(f"{where}: a rule is a mapping with path and permission or allow")
    unknown = set(entry) - {"path", "methods", "permission", "allow", "description"}
    if unknown:
        raise RulesError(f"{where}: unknown fields {sorted(unknown)}")
    path = entry.get("path")
    if not isinstance(path, str):
        raise RulesError(f"{where}: path is required")
    methods = entry.get("methods")
    if methods is not None and (
        not isinstance(methods, list)
        or not methods
        or not all(isinstance(m, str) and _METHOD.fullmatch(m) for m in methods)
    ):
        raise RulesError(f"{where}: methods must be a list of upper-case HTTP methods")
    permission, allow = entry.get("permission"), entry.get("allow")
    if (permission is None) == (allow is None):
        raise RulesError(f"{where}: give exactly one of permission or allow")
    if permission is not None and (not isinstance(permission, str) or not _PERMISSION.fullmatch(permission)):
        raise RulesError(f"{where}: permission must look like namespace.resource.verb, without wildcards")
    if allow is not None and allow not in ("authenticated", "anyone"):
        raise RulesError(f"{where}: allow must be authenticated or anyone")
    regex, folded = _compile(path, where)
    access: Access = "permission" if permission is not None else ("anyone" if allow == "anyone" else "authenticated")
    return Rule(index, frozenset(methods) if methods else None, path, access, permission, regex, folded)


def parse(doc: Any) -> tuple[Rule, ...]:
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise RulesError("the rules file needs a top-level list named rules")
    if set(doc) - {"rules"}:
        raise RulesError(f"unknown top-level fields {sorted(set(doc) - {'rules'})}")
    return tuple(_rule(i, entry) for i, entry in enumerate(doc["rules"]))


def load(path: Path) -> tuple[Rule, ...]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RulesError(f"cannot read the rules file {path}: {exc}") from exc
    return parse(doc)


def canonical_path(target: str) -> str | None:
    """The decoded path of a request target (query dropped), or None when it is not canonical."""
    raw = target.split("?", 1)[0].split("#", 1)[0]
    # A request target is ASCII (RFC 3986: anything else is percent-encoded); servers decode other
    # bytes as they like (aiohttp keeps them as surrogates), so they are not guessed at either.
    if not raw.isascii() or not raw.startswith("/") or _ESCAPE.search(raw):
        return None
    lowered = raw.lower()
    if "%2f" in lowered or "%5c" in lowered or "%00" in lowered:
        return None
    try:
        path = unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\\" in path or any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return None
    if path != "/":
        segments = path[1:].split("/")
        # a trailing slash is one empty last segment, which is fine; any other empty or dot segment is not
        inner = segments[:-1] if segments[-1] == "" else segments
        if any(s in ("", ".", "..") for s in inner):
            return None
    return path


MatchReason = Literal["matched", "no_rule", "path_not_canonical", "ambiguous_case"]


@dataclasses.dataclass(frozen=True)
class Match:
    rule: Rule | None
    reason: MatchReason


def match(rules: Sequence[Rule], method: str, target: str) -> Match:
    path = canonical_path(target)
    if path is None:
        return Match(None, "path_not_canonical")
    exact = next((r for r in rules if r.matches(method, path)), None)
    folded = next((r for r in rules if r.matches_folded(method, path)), None)
    if folded is not exact:
        return Match(None, "ambiguous_case")
    return Match(exact, "matched" if exact else "no_rule")
