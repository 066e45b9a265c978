"""The operator's Prometheus metrics (prometheus_client), served on ``--metrics`` (default :9090).

Label values come from fixed sets (kinds, results, verbs, HTTP statuses, reasons, object kinds), never
from object names, subjects or anything secret, so the number of series stays bounded and nothing a
token or key holds reaches a scrape. Gauges that describe state (the queue, the issuer keys, the
revocations) are read from the running operator at scrape time.
"""

from __future__ import annotations

import datetime
import logging
import urllib.parse
from collections.abc import Callable

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

from tessera.core import clock, issuer

PREFIX = "tessera"
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BUNDLE_BUCKETS = (1_000, 4_000, 16_000, 64_000, 256_000, 512_000, 1_000_000)

logger = logging.getLogger("tessera.metrics")


class Metrics:
    """Every metric the operator exports, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        prometheus_client.ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU, fds
        reg = self.registry
        self.reconciles = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Reconciles by kind and result (ok; retry: failed, retried with backoff; unavailable: the API "
            "server did not answer, retried once it does), and how long each took.",
            ["kind", "result"],
            buckets=RECONCILE_BUCKETS,
            registry=reg,
        )
        self.tokens = Counter(
            f"{PREFIX}_tokens_issued", "Access tokens written to token Secrets, by reason.", ["reason"], registry=reg
        )
        self.withdrawn = Counter(
            f"{PREFIX}_tokens_withdrawn", "Tokens withdrawn from the Secret of a disabled account.", registry=reg
        )
        self.revocations = Gauge(f"{PREFIX}_revocations", "Revocations stored (in force).", registry=reg)
        self.revocations_added = Counter(f"{PREFIX}_revocations_added", "Revocations stored.", registry=reg)
        self.revocations_pruned = Counter(
            f"{PREFIX}_revocations_pruned", "Revocations pruned once every token they cover expired.", registry=reg
        )
        self.bundle_writes = Counter(
            f"{PREFIX}_bundle_writes",
            "Trust bundle writes by result: written, unchanged (compared, nothing to write), failed, "
            "too_large (not written, the namespace warned), removed (the namespace opted out).",
            ["result"],
            registry=reg,
        )
        self.bundle_bytes = Histogram(
            f"{PREFIX}_bundle_bytes", "Size of each trust bundle written.", buckets=BUNDLE_BUCKETS, registry=reg
        )
        self.bundle_largest = Gauge(
            f"{PREFIX}_bundle_largest_bytes", "The largest trust bundle of the last round.", registry=reg
        )
        self.signing_key_age = Gauge(
            f"{PREFIX}_issuer_signing_key_age_seconds", "Age of the issuer key that signs now.", registry=reg
        )
        self.next_rotation = Gauge(
            f"{PREFIX}_issuer_next_rotation_seconds",
            "Seconds until the issuer key schedule next acts (a new key, a retirement); -1 when never.",
            registry=reg,
        )
        self.keys_missing = Gauge(
            f"{PREFIX}_issuer_keys_missing",
            "1 while the issuer key Secret is lost and no key is in memory: no token can be signed.",
            registry=reg,
        )
        self.api_requests = Counter(
            f"{PREFIX}_api_requests",
            "The operator's own API calls by verb and outcome (ok, an HTTP status, or unavailable).",
            ["verb", "outcome"],
            registry=reg,
        )
        self.healed = Counter(
            f"{PREFIX}_healing_actions",
            "Things the operator found damaged or missing and acted on, by object: token_secret, trust_bundle, "
            "issuer_jwks, revocations, issuer_keys (restored from memory), generated_key_lost (withdrawn).",
            ["object"],
            registry=reg,
        )
        self.warnings = Counter(f"{PREFIX}_warnings", "Warning events posted, by reason.", ["reason"], registry=reg)
        self.queue = Gauge(
            f"{PREFIX}_queue_depth",
            "Reconciles waiting: ready (to run now), active (running), scheduled (a later look, such as a token "
            "refresh), parked (waiting for the API server to answer).",
            ["state"],
            registry=reg,
        )

    # --- hooks the rest of the operator calls ----------------------------------------------------------

    def finished(self, kind: str, result: str, seconds: float) -> None:
        self.reconciles.labels(kind, result).observe(seconds)

    def depth(self, ready: int, active: int, scheduled: int, parked: int) -> None:
        for state, value in (("ready", ready), ("active", active), ("scheduled", scheduled), ("parked", parked)):
            self.queue.labels(state).set(value)

    def api(self, verb: str, outcome: str) -> None:
        self.api_requests.labels(verb, outcome).inc()

    def keys(self, keyset: issuer.KeySet, lost: bool, next_event: datetime.datetime | None) -> None:
        """The issuer key gauges, from the key set in use."""
        now = clock.utcnow()
        self.keys_missing.set(1 if lost else 0)
        signing = [k for k in keyset if k.signs_from <= now]
        newest = max(signing, key=lambda k: k.signs_from) if signing else None
        self.signing_key_age.set((now - newest.created_at).total_seconds() if newest else 0)
        self.next_rotation.set((next_event - now).total_seconds() if next_event else -1)

    def gauge_from(self, gauge: Gauge, read: Callable[[], float]) -> None:
        gauge.set_function(read)


def serve(metrics: Metrics, address: str) -> None:
    """Serve /metrics on ``address`` (``host:port``; an empty address serves nothing) from a thread."""
    if not address:
        return
    parsed = urllib.parse.urlsplit(f"//{address}")
    host, port = parsed.hostname or "0.0.0.0", parsed.port or 9090  # noqa: S104 (a Pod serves its metrics)
    prometheus_client.start_http_server(port, addr=host, registry=metrics.registry)
    logger.info("Serving metrics on http://%s:%d/metrics", host, port)
