"""The sidecar's Prometheus metrics, in the text exposition format (no client library needed).

Label values come from fixed sets (decision results and reasons, bundle sources and outcomes, channel
failure kinds, the configured egress upstreams), so series stay bounded.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            label = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{le="{label}"}} {running}')
        out += [f"{name}_sum {self.total}", f"{name}_count {running}"]
        return out


@dataclasses.dataclass(frozen=True)
class Gauges:
    """What the sidecar holds at the moment of a scrape."""

    cache: tuple[int, int]  # token cache hits, misses
    bundle_changed_at: float | None
    bundle_valid: bool  # the mounted file parses
    bundle_sequence: int | None = None
    channel_up: bool | None = None  # None: no channel configured
    token_expires_at: float | None = None  # egress: the token it attaches (None: none held, or no egress)
    egress: bool = False


def _counter(name: str, help_text: str, value: float) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]


def _gauge(name: str, help_text: str, value: float) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]


def _labelled(name: str, help_text: str, kind: str, values: Mapping[Any, int], labels: tuple[str, ...]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for key, count in sorted(values.items()):
        pairs = ",".join(f'{label}="{value}"' for label, value in zip(labels, key, strict=True))
        lines.append(f"{name}{{{pairs}}} {count}")
    return lines


class Metrics:
    """Counters; label values come from fixed sets (results, reasons, sources, configured upstreams)."""

    def __init__(self) -> None:
        self.decisions: dict[tuple[str, str], int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.bundle_reload_errors = 0
        self.bundle_reloads = 0
        self.bundles: dict[tuple[str, str], int] = {}  # (source, outcome) -> count
        self.upstream_errors = 0
        self.channel_polls = 0
        self.channel_failures: dict[tuple[str], int] = {}
        self.egress_requests: dict[tuple[str, str], int] = {}  # (upstream, result)
        self.token_refreshes = 0
        self.token_failures = 0

    def decided(self, status: int, reason: str, seconds: float) -> None:
        result = {200: "allowed", 401: "unauthenticated"}.get(status, "forbidden")
        key = (result, reason)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        self.latency.observe(seconds)

    def count(self, table: dict[Any, int], *key: str) -> None:
        table[key] = table.get(key, 0) + 1

    def render(self, gauges: Gauges, now: Callable[[], float] = time.time) -> str:
        hits, misses = gauges.cache
        changed = gauges.bundle_changed_at
        lines = _labelled(
            "tessera_sidecar_decisions_total", "Requests decided, by result and reason.", "counter",
            self.decisions, ("result", "reason"),
        )  # fmt: skip
        lines += [
            "# HELP tessera_sidecar_decision_seconds Time to decide one request (verification included).",
            "# TYPE tessera_sidecar_decision_seconds histogram",
            *self.latency.lines("tessera_sidecar_decision_seconds"),
        ]
        lines += _counter("tessera_sidecar_token_cache_hits_total", "Tokens found verified in the cache.", hits)
        lines += _counter("tessera_sidecar_token_cache_misses_total", "Tokens verified from scratch.", misses)
        lines += _gauge(
            "tessera_sidecar_bundle_age_seconds",
            "Seconds since the trust bundle in use last changed.",
            now() - changed if changed else float("nan"),
        )
        lines += _gauge(
            "tessera_sidecar_bundle_valid",
            "1 when the mounted trust bundle is in use or older than the one in use, 0 when it was refused.",
            int(gauges.bundle_valid),
        )
        lines += _gauge(
            "tessera_sidecar_bundle_sequence",
            "Sequence of the trust bundle in use (0: none, or one without a sequence).",
            gauges.bundle_sequence or 0,
        )
        lines += _counter("tessera_sidecar_bundle_reloads_total", "Trust bundles put in use.", self.bundle_reloads)
        lines += _counter(
            "tessera_sidecar_bundle_reload_errors_total",
            "Trust bundles refused (the last good one stayed).",
            self.bundle_reload_errors,
        )
        lines += _labelled(
            "tessera_sidecar_bundles_total",
            "Trust bundles received, by source (mount, channel) and outcome (installed, same, older, refused).",
            "counter", self.bundles, ("source", "outcome"),
        )  # fmt: skip
        if gauges.channel_up is not None:
            lines += _gauge(
                "tessera_sidecar_channel_up",
                "1 while the live bundle channel answers, 0 while it fails (the mount is the fallback).",
                int(gauges.channel_up),
            )
            lines += _counter(
                "tessera_sidecar_channel_polls_total", "Long polls the channel answered.", self.channel_polls
            )
            lines += _labelled(
                "tessera_sidecar_channel_failures_total", "Channel attempts that failed, by reason.", "counter",
                self.channel_failures, ("reason",),
            )  # fmt: skip
        lines += _counter(
            "tessera_sidecar_upstream_errors_total", "Proxied requests the app did not answer.", self.upstream_errors
        )
        if gauges.egress:
            expires = gauges.token_expires_at
            lines += _gauge(
                "tessera_sidecar_egress_token_expires_in_seconds",
                "Seconds until the token egress attaches expires (NaN: none held).",
                expires - now() if expires is not None else float("nan"),
            )
            lines += _counter(
                "tessera_sidecar_egress_token_refreshes_total", "Tokens egress took up.", self.token_refreshes
            )
            lines += _counter(
                "tessera_sidecar_egress_token_failures_total",
                "Failed attempts to get or read a token.",
                self.token_failures,
            )
            lines += _labelled(
                "tessera_sidecar_egress_requests_total", "Requests egress passed on, by upstream and result.",
                "counter", self.egress_requests, ("upstream", "result"),
            )  # fmt: skip
        return "\n".join(lines) + "\n"
