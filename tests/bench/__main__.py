"""``make bench``: figures written to a JSON file, each next to a baseline measured in the same run.

- crypto: sign and verify rates per algorithm; PyJWT decode next to raw ``cryptography`` verify.
- apply -> Ready: p50/p99 over sequential ServiceAccounts, next to the bare API server's
  create -> watch-event latency for a ConfigMap (the floor any controller sits on).
- burst: N ServiceAccounts created at once -> all Ready; total time, rate, operator RSS, and how
  often the trust bundle of their (opted-in) namespace was rewritten meanwhile.
- disable -> revocation in the trust bundle: p50/p99 with N accounts present, next to the same baseline.
- grants at scale (:mod:`tests.bench.grants_scale`): 10,000 RoleBindings over 2,000 principals.
- past one machine (:mod:`tests.bench.scale_model`): what one operator keeps per object, measured
  in-process up to 100,000 bindings; the writes 100,000 accounts ask for; tenants spread over shards.
- where the memory goes (:mod:`tests.bench.memory`): tracemalloc at the peak and at rest, by allocation
  site, over the same objects, next to the Kopf floor (Kopf alone with empty handlers).
- the sidecar (:mod:`tests.bench.sidecar`): verification in-process and the HTTP auth-request mode.
- healing (:mod:`tests.bench.healing`): damage -> repaired for every kind of object the operator keeps;
  an API server outage -> every due token current again.
- the issuer service (:mod:`tests.bench.issuer`): token exchanges on one core next to raw sign + verify;
  requests reaching an identity provider during an unknown-kid storm.
- the live bundle channel (:mod:`tests.bench.channel`): thousands of simulated sidecars: the issuer's
  memory per subscriber, pushes per second, a restart under all of them (with jitter, and the naive
  client as the baseline).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import kubernetes

from tessera.api import meta
from tessera.core import issuer, settings
from tessera.crypto import keys
from tessera.crypto import tokens as crypto_tokens
from tests import harness, resources, waiting
from tests.bench import channel, common, grants_scale, healing, memory, scale_model, sidecar
from tests.bench import issuer as issuer_service

NOW = datetime.datetime.now(datetime.UTC)


def crypto_figures(algorithm: keys.Algorithm, count: int) -> dict[str, float]:
    key = issuer.initial(algorithm, NOW)[0]
    claims = {"iss": "https://bench", "sub": "urn:tessera:serviceaccount:a:b", "aud": "x", "exp": 2**31, "iat": 0}
    token = crypto_tokens.sign(claims, key.private_key, key.kid)
    head, body, sig = token.split(".")
    raw = common.raw_verifier(key.public_key, f"{head}.{body}".encode(), keys.b64url_decode(sig))

    def decode() -> object:
        return jwt.decode(token, key.public_key, algorithms=[algorithm], audience="x")

    figures = {
        "sign_per_s": common.rate(lambda: crypto_tokens.sign(claims, key.private_key, key.kid), count),
        "raw_verify_per_s": common.rate(raw, count),
        "pyjwt_decode_per_s": common.rate(decode, count),
        "token_bytes": float(len(token)),
    }
    figures["pyjwt_over_raw"] = figures["pyjwt_decode_per_s"] / figures["raw_verify_per_s"]
    return figures


def crypto_bench(count: int) -> dict[str, Any]:
    return {algorithm: crypto_figures(algorithm, count) for algorithm in keys.ALGORITHMS}


class ReadyWatcher:
    """Records when each ServiceAccount in a namespace is first seen Ready=True (one watch, a thread)."""

    def __init__(self, cluster: harness.Cluster, namespace: str) -> None:
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(cluster, namespace), daemon=True)
        self._thread.start()

    def _run(self, cluster: harness.Cluster, namespace: str) -> None:
        while not self._stop.is_set():
            stream = kubernetes.watch.Watch().stream(
                cluster.custom.list_namespaced_custom_object, meta.GROUP, meta.VERSION, namespace, "serviceaccounts",
                timeout_seconds=60,
            )  # fmt: skip
            for event in stream:
                obj = event["object"]
                conditions = (obj.get("status") or {}).get("conditions") or []
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    with self.lock:
                        self.seen.setdefault(obj["metadata"]["name"], time.monotonic())

    def ready_at(self, name: str) -> float | None:
        with self.lock:
            return self.seen.get(name)

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def stop(self) -> None:
        self._stop.set()


def sa_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{meta.GROUP}/{meta.VERSION}",
        "kind": "ServiceAccount",
        "metadata": {"name": name},
        "spec": {},
    }


def create_sa(cluster: harness.Cluster, namespace: str, name: str) -> None:
    cluster.custom.create_namespaced_custom_object(
        meta.GROUP, meta.VERSION, namespace, "serviceaccounts", sa_manifest(name)
    )


def sequential_ready(cluster: harness.Cluster, namespace: str, count: int) -> dict[str, float]:
    watcher = ReadyWatcher(cluster, namespace)
    samples = []
    try:
        for i in range(count):
            name = f"seq-{i}"
            started = time.monotonic()
            create_sa(cluster, namespace, name)
            done = waiting.until(
                functools.partial(watcher.ready_at, name), timeout=60, interval=0.002, what=f"{name} Ready"
            )
            samples.append(done - started)
    finally:
        watcher.stop()
    return common.percentiles(samples)


def revoked_subjects(bundle_json: str) -> set[str]:
    return {r["sub"] for r in json.loads(bundle_json)["revocations"]}


def revocation_latency(cluster: harness.Cluster, namespace: str, count: int) -> dict[str, float]:
    """disable a Ready account -> its revocation in the namespace's trust bundle, seen on a watch."""
    watcher = ReadyWatcher(cluster, namespace)
    samples = []
    try:
        for i in range(count):
            name = f"rev-{i}"
            create_sa(cluster, namespace, name)
            waiting.until(functools.partial(watcher.ready_at, name), timeout=60, interval=0.01, what=f"{name} Ready")
            subject = f"urn:tessera:serviceaccount:{namespace}:{name}"
            stream = common.configmap_events(cluster, namespace, settings.TRUST_BUNDLE_CONFIGMAP, timeout=30)
            started = time.monotonic()
            cluster.custom.patch_namespaced_custom_object(
                meta.GROUP, meta.VERSION, namespace, "serviceaccounts", name, {"spec": {"disabled": True}}
            )
            next(e for e in stream if subject in revoked_subjects(e["object"].data["bundle.json"]))
            samples.append(time.monotonic() - started)
    finally:
        watcher.stop()
    return common.percentiles(samples)


class BundleWrites:
    """Counts writes of a namespace's trust bundle (a watch in a thread)."""

    def __init__(self, cluster: harness.Cluster, namespace: str) -> None:
        self.writes = 0
        self._watch = kubernetes.watch.Watch()
        events = common.configmap_events(cluster, namespace, settings.TRUST_BUNDLE_CONFIGMAP, None, self._watch)
        self._thread = threading.Thread(target=self._count, args=(events,), daemon=True)
        self._thread.start()

    def _count(self, events: Iterator[dict[str, Any]]) -> None:
        with contextlib.suppress(Exception):  # the stream ends with an error when stopped
            for _ in events:
                self.writes += 1

    def stop(self) -> int:
        self._watch.stop()
        return self.writes


CREATORS = 8  # threads creating the burst's accounts, in every run that is compared


def burst_ready(cluster: harness.Cluster, namespace: str, count: int, operator_pid: int) -> dict[str, Any]:
    resources.opt_in(cluster, namespace)
    waiting.until(lambda: resources.bundle(cluster, namespace), what="a trust bundle")
    writes = BundleWrites(cluster, namespace)
    watcher = ReadyWatcher(cluster, namespace)
    idle = common.memory_kib(operator_pid)
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(CREATORS) as pool:
            list(pool.map(lambda i: create_sa(cluster, namespace, f"burst-{i}"), range(count)))
        created = time.monotonic() - started
        waiting.until(lambda: watcher.count() >= count, timeout=1800, interval=0.05, what=f"{count} Ready")
        total = time.monotonic() - started
    finally:
        watcher.stop()
    return {
        "count": count,
        "create_calls_s": created,
        "all_ready_s": total,
        "ready_per_s": count / total,
        "all_ready_over_create_calls": total / created,
        "operator_idle": idle,
        "operator_after": common.memory_kib(operator_pid),
        "bundle_writes_during_burst": writes.stop(),
    }


def burst_floor(cluster: harness.Cluster, namespace: str, count: int, status: dict[str, Any]) -> dict[str, Any]:
    """The API server's floor under the burst, with the operator stopped: the same ``count`` creates from
    CREATORS threads, and for each account, as soon as it exists, the three writes the operator makes to make it
    Ready (a metadata patch as its finalizer, its token Secret, its status: ``status`` is a Ready
    account's) from as many threads as the operator's own client. No token is signed, nothing is read."""
    token = "x" * 900  # about a signed token's size
    custom = functools.partial(cluster.custom.patch_namespaced_custom_object, meta.GROUP, meta.VERSION, namespace)
    status_of = functools.partial(
        cluster.custom.patch_namespaced_custom_object_status, meta.GROUP, meta.VERSION, namespace
    )

    def ready(name: str) -> None:
        custom("serviceaccounts", name, {"metadata": {"annotations": {"bench.tessera.dev/floor": "1"}}})
        secret = kubernetes.client.V1Secret(
            metadata=kubernetes.client.V1ObjectMeta(name=f"{name}-token"), string_data={"token": token}
        )
        cluster.core.create_namespaced_secret(namespace, secret)
        status_of("serviceaccounts", name, {"status": status})

    started = time.monotonic()
    with ThreadPoolExecutor(grants_scale.FLOOR_THREADS) as writers, ThreadPoolExecutor(CREATORS) as creators:

        def create(i: int) -> Any:
            create_sa(cluster, namespace, f"floor-{i}")
            return writers.submit(ready, f"floor-{i}")

        follow_ups = list(creators.map(create, range(count)))
        created = time.monotonic() - started
        for done in follow_ups:
            done.result()
    return {"count": count, "create_calls_s": created, "all_writes_s": time.monotonic() - started}


def cluster_bench(sequential: int, burst: int) -> dict[str, Any]:
    # a connection for each of the floor's threads (beside the watches), as the operator's client has
    connections = grants_scale.FLOOR_THREADS + CREATORS
    with tempfile.TemporaryDirectory() as tmp, harness.local_cluster(Path(tmp) / "cp", pool=connections) as cluster:
        system = harness.create_namespace(cluster, "tessera-system")
        operator = harness.start_operator(
            cluster, system, Path(tmp) / "operator.log", extra_env={"TESSERA_REFRESH_CHECK_SECONDS": "30"}
        )
        bursting = harness.create_namespace(cluster, "burst")
        try:
            results: dict[str, Any] = {
                "baseline_configmap_create_to_watch": common.baseline_watch_latency(
                    cluster, harness.create_namespace(cluster, "base"), sequential
                ),
                "apply_to_ready": sequential_ready(cluster, harness.create_namespace(cluster, "seq"), sequential),
                "burst": burst_ready(cluster, bursting, burst, operator.process.pid),
            }
            revoking = harness.create_namespace(cluster, "revoke")
            resources.opt_in(cluster, revoking)
            results["disable_to_revocation_in_bundle"] = revocation_latency(cluster, revoking, min(sequential, 20))
            results["revocation_over_baseline_p50"] = (
                results["disable_to_revocation_in_bundle"]["p50_ms"]
                / results["baseline_configmap_create_to_watch"]["p50_ms"]
            )
            results["apply_to_ready_over_baseline_p50"] = (
                results["apply_to_ready"]["p50_ms"] / results["baseline_configmap_create_to_watch"]["p50_ms"]
            )
        finally:
            harness.stop_operator(operator)
        ready = cluster.custom_object(bursting, "serviceaccounts", "burst-0")["status"]
        bare = harness.create_namespace(cluster, "bare")
        started = time.monotonic()
        with ThreadPoolExecutor(CREATORS) as pool:
            list(pool.map(lambda i: create_sa(cluster, bare, f"bare-{i}"), range(burst)))
        results["burst_bare_create_calls_s"] = time.monotonic() - started  # the same creates, nothing else running
        floor = burst_floor(cluster, harness.create_namespace(cluster, "floor"), burst, ready)
        results["burst_api_floor"] = floor
        results["burst_all_ready_over_bare_create_calls"] = (
            results["burst"]["all_ready_s"] / results["burst_bare_create_calls_s"]
        )
        results["burst_all_ready_over_api_floor"] = results["burst"]["all_ready_s"] / floor["all_writes_s"]
        return results


def write_rate(results: dict[str, Any]) -> float | None:
    """API writes per second one operator sustained in this run's grants cold start, if it ran."""
    cold = (results.get("grants") or {}).get("cold_start") or {}
    seconds, writes = cold.get("process_start_to_last_write_s"), cold.get("api_writes_until_quiet")
    return sum(writes.values()) / seconds if seconds and writes else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("--out", default="bench-results.json")
    parser.add_argument("--sequential", type=int, default=50, help="ServiceAccounts applied one by one")
    parser.add_argument("--burst", type=int, default=10_000, help="ServiceAccounts created at once")
    parser.add_argument("--heal-accounts", type=int, default=50, help="accounts (60 s tokens) in the healing bench")
    parser.add_argument("--heal-repeats", type=int, default=10, help="damages timed per kind of object")
    parser.add_argument("--crypto-count", type=int, default=2000, help="operations per crypto figure")
    parser.add_argument("--bindings", type=int, default=10_000, help="RoleBindings in the grants bench")
    parser.add_argument("--principals", type=int, default=2_000, help="principals (half of them ServiceAccounts)")
    parser.add_argument("--tenants", type=int, default=50, help="namespaces the bindings are spread over")
    parser.add_argument("--changes", type=int, default=100, help="binding changes timed in the grants bench")
    parser.add_argument("--sidecar-count", type=int, default=2000, help="tokens per sidecar verify figure")
    parser.add_argument("--sidecar-concurrency", type=int, default=32, help="connections of the HTTP load")
    parser.add_argument("--sidecar-seconds", type=float, default=10.0, help="length of each HTTP load run")
    parser.add_argument("--issuer-seconds", type=float, default=10.0, help="length of each token endpoint load")
    parser.add_argument("--issuer-concurrency", type=int, default=16, help="connections of the token endpoint load")
    parser.add_argument("--subscribers", type=int, default=2000, help="simulated sidecars on the live channel")
    parser.add_argument("--storm-seconds", type=float, default=90.0, help="length of the unknown-kid storm")
    parser.add_argument(
        "--only",
        choices=("crypto", "cluster", "healing", "grants", "memory", "scale", "sidecar", "issuer", "channel"),
        action="append",
        help="run only these",
    )
    args = parser.parse_args(argv)
    only = set(
        args.only or ("crypto", "cluster", "healing", "grants", "memory", "scale", "sidecar", "issuer", "channel")
    )
    results: dict[str, Any] = {
        "when": NOW.isoformat(),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count()},
    }
    if "crypto" in only:
        results["crypto"] = crypto_bench(args.crypto_count)
    if "cluster" in only:
        results["cluster"] = cluster_bench(args.sequential, args.burst)
    if "healing" in only:
        results["healing"] = healing.healing_bench(args.heal_accounts, args.heal_repeats)
    if "sidecar" in only:
        results["sidecar"] = sidecar.sidecar_bench(args.sidecar_count, args.sidecar_concurrency, args.sidecar_seconds)
    if "channel" in only:
        results["channel"] = channel.channel_bench(args.subscribers)
    if "issuer" in only:
        results["issuer"] = issuer_service.issuer_bench(
            args.issuer_seconds, args.issuer_concurrency, args.storm_seconds, args.crypto_count
        )
    if "grants" in only:
        results["grants"] = grants_scale.grants_bench(args.bindings, args.principals, args.tenants, args.changes)
    if "memory" in only:
        results["memory"] = memory.memory_bench(args.bindings, args.principals, args.tenants)
    if "scale" in only:
        results["scale"] = scale_model.scale_bench(100_000, 100_000, write_rate(results))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
