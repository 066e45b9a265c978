"""The live bundle channel at scale, each figure next to a baseline from the same run: ``subscribers``
simulated sidecars (:mod:`tests.bench.subscribers`: the sidecar's own channel code, one Kubernetes
token each, real HTTPS) against one ``tessera issuer`` on a local control plane with the operator.

- memory on the serving side: the issuer's resident memory with every subscriber's long poll waiting,
  per subscriber, next to the idle issuer's;
- pushes: one change of the namespace's bundle (the operator writes it) -> every subscriber holds it:
  seconds from the ConfigMap's watch event to the first and the last subscriber, and pushes per
  second; next to the API server's own create -> watch event latency;
- reconnect storm: the issuer restarted under all of them; seconds until every subscriber is back,
  attempts reaching the issuer per second (the peak second), TokenReviews and load shed; with the
  sidecar's backoff and jitter, next to the naive client (a fixed 0.1 s retry) in the same run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes

from tessera import trustbundle
from tessera.core import settings
from tests import harness, issuer_kit, waiting
from tests.bench import common

NAMESPACE = "subscribed"


def status(path: Path) -> dict[str, Any]:
    try:
        found: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found


def tokens(cluster: harness.Cluster, count: int) -> list[str]:
    cluster.kubectl("create", "serviceaccount", "pods", "-n", NAMESPACE)
    request = kubernetes.client.AuthenticationV1TokenRequest(
        spec=kubernetes.client.V1TokenRequestSpec(audiences=["tessera-bench"], expiration_seconds=3600)
    )
    found = []
    for _ in range(count):
        made = cluster.core.create_namespaced_service_account_token("pods", NAMESPACE, request)
        found.append(str(cluster.to_dict(made)["status"]["token"]))
    return found


@contextlib.contextmanager
def subscribers(folder: Path, issuer: issuer_kit.Issuer, token_file: Path, jitter: bool) -> Iterator[Path]:
    path = folder / f"status-{'jitter' if jitter else 'naive'}.json"
    cmd = [sys.executable, "-m", "tests.bench.subscribers", "--issuer", issuer.url, "--ca", str(issuer.tls.ca),
           "--namespace", NAMESPACE, "--tokens", str(token_file), "--status", str(path)]  # fmt: skip
    if not jitter:
        cmd.append("--no-jitter")
    with (folder / f"subscribers-{'jitter' if jitter else 'naive'}.log").open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield path
    finally:
        harness.stop_process(process)


def bundle_sequence(cluster: harness.Cluster) -> int:
    text = cluster.configmap_data(NAMESPACE, settings.TRUST_BUNDLE_CONFIGMAP)["bundle.json"]
    return trustbundle.parse(text).sequence or 0


def push(cluster: harness.Cluster, path: Path, count: int, name: str) -> dict[str, Any]:
    """One bundle change: the ConfigMap's watch event -> first and last subscriber holding it."""
    events = common.configmap_events(cluster, NAMESPACE, settings.TRUST_BUNDLE_CONFIGMAP, timeout=60)
    applied = time.time()
    body = {"apiVersion": "iam.tessera.dev/v1alpha1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": NAMESPACE}, "spec": {"allowedCIDRs": ["10.9.0.0/16"]}}  # fmt: skip
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(body))
    event = next(e for e in events if e["type"] == "MODIFIED")
    seen = time.time()
    sequence = trustbundle.parse(event["object"].data["bundle.json"]).sequence

    def everyone() -> list[float] | None:
        got = status(path).get("received", {}).get(str(sequence))
        return got if got and got[2] >= count else None

    first, last, _ = waiting.until(everyone, timeout=120, interval=0.1, what="every subscriber to hold the change")
    return {
        "apply_to_watch_event_s": round(seen - applied, 3),
        "watch_event_to_first_subscriber_s": round(first - seen, 3),
        "watch_event_to_last_subscriber_s": round(last - seen, 3),
        "pushes_per_s": round(count / max(last - seen, 1e-3)),
    }


def storm(
    cluster: harness.Cluster, issuer: issuer_kit.Issuer, path: Path, count: int, restart: Any
) -> tuple[issuer_kit.Issuer, dict[str, Any]]:
    """Restart the issuer under every subscriber; how they come back."""
    stopped = time.time()
    harness.stop_process(issuer.process)
    issuer = restart()
    ready = time.time()

    def back() -> bool:
        return bool(status(path).get("up", 0) >= count)

    waiting.until(back, timeout=300, interval=0.2, what="every subscriber back")
    done = time.time()
    per_second = {
        int(second) - int(ready): n for second, n in status(path)["attempts"].items() if int(second) >= int(stopped)
    }
    after_ready = {s: n for s, n in per_second.items() if s >= 0}
    detail = issuer.get_json("/readyz")["channel"]
    return issuer, {
        "issuer_down_s": round(ready - stopped, 1),
        "issuer_ready_to_all_back_s": round(done - ready, 1),
        "attempts_while_down": sum(n for s, n in per_second.items() if s < 0),
        "attempts_after_ready": sum(after_ready.values()),
        "peak_attempts_per_s_after_ready": max(after_ready.values(), default=0),
        "attempts_per_s_first_10_s": [after_ready.get(s, 0) for s in range(10)],
        "token_reviews": detail["reviews"],
        "shed_503": detail["shed"],
    }


def channel_bench(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tessera-channel-") as tmp:
        folder = Path(tmp)
        with harness.local_cluster(folder / "cp", pool=32) as cluster:
            system = harness.create_namespace(cluster, "tessera-system")
            cluster.kubectl("create", "namespace", NAMESPACE)
            cluster.kubectl("label", "namespace", NAMESPACE, f"{settings.TRUST_BUNDLE_LABEL}=enabled")
            tls = issuer_kit.tls_files(folder / "tls")
            port = harness.free_port()
            env = {"TESSERA_ISSUER": f"https://127.0.0.1:{port}", "TESSERA_KUBERNETES_AUDIENCE": "tessera-bench"}
            operator = harness.start_operator(cluster, system, folder / "operator.log", extra_env=env)
            runs = {"n": 0}

            def start() -> issuer_kit.Issuer:
                runs["n"] += 1
                return issuer_kit.start_issuer(cluster, system, port, tls, folder / f"issuer-{runs['n']}.log", env)

            try:
                waiting.until(lambda: bundle_present(cluster), timeout=60, what="the bundle")
                baseline = common.baseline_watch_latency(cluster, NAMESPACE, 20)
                token_file = folder / "tokens.txt"
                made = time.monotonic()
                token_file.write_text("\n".join(tokens(cluster, count)))
                token_seconds = time.monotonic() - made
                results: dict[str, Any] = {"subscribers": count, "token_requests_s": round(token_seconds, 1)}
                for jitter in (True, False):
                    issuer = start()  # a fresh issuer for each run: its idle memory is the baseline
                    idle = common.rss_kib(issuer.process.pid)
                    with subscribers(folder, issuer, token_file, jitter) as path:
                        began = time.time()
                        waiting.until(functools.partial(all_up, path, count), timeout=300, interval=0.2,
                                      what="every subscriber up")  # fmt: skip
                        run: dict[str, Any] = {"first_connect_all_up_s": round(time.time() - began, 1)}
                        waiting.until(functools.partial(polls_waiting, issuer, int(count * 0.95)), timeout=120,
                                      interval=0.2, what="the long polls waiting")  # fmt: skip
                        waiting_rss = common.rss_kib(issuer.process.pid)
                        run["issuer_rss_kib"] = {"idle": idle, "subscribed": waiting_rss}
                        run["issuer_kib_per_subscriber"] = round((waiting_rss - idle) / count, 1)
                        run["subscribers_process_rss_kib"] = common.rss_kib(status(path)["pid"])
                        run["push"] = [push(cluster, path, count, f"change-{int(jitter)}-{i}") for i in range(3)]
                        issuer, run["restart"] = storm(cluster, issuer, path, count, start)
                    harness.stop_process(issuer.process)
                    results["with_backoff_and_jitter" if jitter else "naive_fixed_retry_baseline"] = run
                results["api_server_create_to_watch_event"] = baseline
                return results
            finally:
                harness.stop_operator(operator)


def all_up(path: Path, count: int) -> bool:
    return bool(status(path).get("up", 0) >= count)


def polls_waiting(issuer: issuer_kit.Issuer, count: int) -> bool:
    return bool(issuer.get_json("/readyz")["channel"]["waiting"] >= count)


def bundle_present(cluster: harness.Cluster) -> bool:
    try:
        return bundle_sequence(cluster) > 0
    except kubernetes.client.ApiException:
        return False


if __name__ == "__main__":
    print(json.dumps(channel_bench(int(sys.argv[1]) if len(sys.argv) > 1 else 2000), indent=2))
