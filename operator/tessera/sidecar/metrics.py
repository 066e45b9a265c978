"""The sidecar's Prometheus metrics, in the text exposition format (no client library needed).

Label values come from fixed sets (decision results and reasons), so series stay bounded.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

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


class Metrics:
    def __init__(self) -> None:
        self.decisions: dict[tuple[str, str], int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.bundle_reload_errors = 0
        self.bundle_reloads = 0
        self.upstream_errors = 0

    def decided(self, status: int, reason: str, seconds: float) -> None:
        result = {200: "allowed", 401: "unauthenticated"}.get(status, "forbidden")
        key = (result, reason)
        self.decisions[key] = self.decisions.get(key, 0) + 1
        self.latency.observe(seconds)

    def render(
        self,
        cache: tuple[int, int],
        bundle_changed_at: float | None,
        bundle_valid: bool,
        now: Callable[[], float] = time.time,
    ) -> str:
        hits, misses = cache
        lines = [
            "# HELP tessera_sidecar_decisions_total Requests decided, by result and reason.",
            "# TYPE tessera_sidecar_decisions_total counter",
        ]
        lines += [
            f'tessera_sidecar_decisions_total{{result="{result}",reason="{reason}"}} {count}'
            for (result, reason), count in sorted(self.decisions.items())
        ]
        lines += [
            "# HELP tessera_sidecar_decision_seconds Time to decide one request (verification included).",
            "# TYPE tessera_sidecar_decision_seconds histogram",
            *self.latency.lines("tessera_sidecar_decision_seconds"),
            "# HELP tessera_sidecar_token_cache_hits_total Tokens found verified in the cache.",
            "# TYPE tessera_sidecar_token_cache_hits_total counter",
            f"tessera_sidecar_token_cache_hits_total {hits}",
            "# HELP tessera_sidecar_token_cache_misses_total Tokens verified from scratch.",
            "# TYPE tessera_sidecar_token_cache_misses_total counter",
            f"tessera_sidecar_token_cache_misses_total {misses}",
            "# HELP tessera_sidecar_bundle_age_seconds Seconds since the trust bundle in use last changed.",
            "# TYPE tessera_sidecar_bundle_age_seconds gauge",
            f"tessera_sidecar_bundle_age_seconds {now() - bundle_changed_at if bundle_changed_at else float('nan')}",
            "# HELP tessera_sidecar_bundle_valid 1 when the mounted trust bundle is in use, 0 when it was refused.",
            "# TYPE tessera_sidecar_bundle_valid gauge",
            f"tessera_sidecar_bundle_valid {int(bundle_valid)}",
            "# HELP tessera_sidecar_bundle_reloads_total Trust bundles loaded.",
            "# TYPE tessera_sidecar_bundle_reloads_total counter",
            f"tessera_sidecar_bundle_reloads_total {self.bundle_reloads}",
            "# HELP tessera_sidecar_bundle_reload_errors_total Trust bundles refused (the last good one stayed).",
            "# TYPE tessera_sidecar_bundle_reload_errors_total counter",
            f"tessera_sidecar_bundle_reload_errors_total {self.bundle_reload_errors}",
            "# HELP tessera_sidecar_upstream_errors_total Proxied requests the app did not answer.",
            "# TYPE tessera_sidecar_upstream_errors_total counter",
            f"tessera_sidecar_upstream_errors_total {self.upstream_errors}",
        ]
        return "\n".join(lines) + "\n"
