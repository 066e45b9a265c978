"""Helpers every benchmark shares: rates, percentiles, resident memory, the raw signature check
(the limit for verification), and the API server's own create -> watch round trip (the baseline)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from tessera.crypto import keys
from tests import harness


def rate(fn: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        fn()
    return count / (time.perf_counter() - started)


def raw_verifier(public: keys.PublicKey, signing_input: bytes, signature: bytes) -> Callable[[], None]:
    """``cryptography``'s verify call for the key type, as any JWT library ends in it: the baseline.
    (For RSA the sidecar's own check is cheaper still; :mod:`tests.bench.sidecar` also reports the bare
    public operation.)"""
    if isinstance(public, ec.EllipticCurvePublicKey):
        half = len(signature) // 2
        der = utils.encode_dss_signature(
            int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        )
        return lambda: public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    if isinstance(public, ed25519.Ed25519PublicKey):
        return lambda: public.verify(signature, signing_input)
    assert isinstance(public, rsa.RSAPublicKey)
    return lambda: public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]  # noqa: E731
    return {
        "n": len(ordered),
        "p50_ms": pick(0.5) * 1000,
        "p99_ms": pick(0.99) * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


def configmap_events(
    cluster: harness.Cluster,
    namespace: str,
    name: str,
    timeout: int | None,
    watch: kubernetes.watch.Watch | None = None,
) -> Iterator[dict[str, Any]]:
    """Events of one ConfigMap from now on (a watch from the current resourceVersion; no timeout: until stopped)."""
    rv = cluster.to_dict(cluster.core.list_namespaced_config_map(namespace))["metadata"]["resourceVersion"]
    limit = {"timeout_seconds": timeout} if timeout is not None else {}
    events: Iterator[dict[str, Any]] = (watch or kubernetes.watch.Watch()).stream(
        cluster.core.list_namespaced_config_map,
        namespace,
        resource_version=rv,
        field_selector=f"metadata.name={name}",
        **limit,
    )
    return events


def baseline_watch_latency(cluster: harness.Cluster, namespace: str, count: int) -> dict[str, float]:
    """create ConfigMap -> its ADDED event on a watch: the API server's own round trip."""
    samples = []
    for i in range(count):
        stream = configmap_events(cluster, namespace, f"baseline-{i}", timeout=10)
        started = time.monotonic()
        body = kubernetes.client.V1ConfigMap(
            metadata=kubernetes.client.V1ObjectMeta(name=f"baseline-{i}"), data={"k": "v"}
        )
        cluster.core.create_namespaced_config_map(namespace, body)
        next(stream)
        samples.append(time.monotonic() - started)
    return percentiles(samples)


def memory_kib(pid: int) -> dict[str, int]:
    """Resident and peak resident memory of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "peak_rss_kib": int(fields["VmHWM"].split()[0])}


def rss_kib(pid: int) -> int:
    return memory_kib(pid)["rss_kib"]
