"""Operating the issuer, each on a control plane of its own: scheduled key rotation with publish-before-
sign and retirement only after every token has expired, two replicas racing at start, a restart that
rewrites nothing, and a bundle that would exceed its size limit.
"""

from __future__ import annotations

import base64
import concurrent.futures
import datetime
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import kubernetes
import pytest

from tessera.core import settings
from tests import waiting
from tests.harness import Cluster, Operator, create_namespace, start_operator, stop_operator
from tests.resources import SA, SAK, apply, bundle, bundle_kids, reason_is, token_in, warnings


@pytest.fixture
def operators(private_cluster: Cluster, tmp_path: Path) -> Iterator[list[Operator]]:
    """Operators a test starts (stopped afterwards, their logs printed on failure)."""
    started: list[Operator] = []
    yield started
    for running in started:
        stop_operator(running)


def launch(cluster: Cluster, namespace: str, log: Path, started: list[Operator], **env: str) -> Operator:
    running = start_operator(cluster, namespace, log, extra_env=env)
    started.append(running)
    return running


def stored_keys(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    secret = cluster.secret(namespace, settings.ISSUER_KEYS_SECRET) or {}
    keys: list[dict[str, Any]] = json.loads(base64.b64decode(secret["data"]["keys.json"]))["keys"]
    return keys


def acted(operator: Operator, metric: str) -> float:
    """The sum of a metric's series at the operator's /metrics: what it did, by its own count."""
    return sum(value for series, value in operator.metrics().items() if series.partition("{")[0] == metric)


def kid_of(cluster: Cluster, namespace: str, secret: str) -> str | None:
    token = token_in(cluster, namespace, secret)
    return jwt.get_unverified_header(token)["kid"] if token else None


def test_rotation_publishes_before_signing_and_retires_after_the_last_token_expires(
    private_cluster: Cluster, operators: list[Operator], tmp_path: Path
) -> None:
    cluster = private_cluster
    home = create_namespace(cluster, "tessera-system")
    env = {
        "TESSERA_KEY_ROTATION_HOURS": str(20 / 3600),
        "TESSERA_KEY_PUBLISH_LEAD_SECONDS": "6",
        "TESSERA_MAX_TOKEN_TTL_SECONDS": "60",
    }
    launch(cluster, home, tmp_path / "operator.log", operators, **env)
    apps = create_namespace(cluster, "apps")
    cluster.core.patch_namespace(apps, {"metadata": {"labels": {settings.TRUST_BUNDLE_LABEL: "enabled"}}})
    apply(cluster, apps, SA, "svc", {"token": {"ttlSeconds": 3600}})  # capped at 60 s by the operator
    [first] = stored_keys(cluster, home)
    waiting.until(lambda: kid_of(cluster, apps, "svc-tessera-token") == first["kid"], what="a token by the first key")
    waiting.until(lambda: first["kid"] in bundle_kids(cluster, apps, "issuerKeys"), what="the first bundle")

    def published_before_used() -> bool:
        published = bundle_kids(cluster, apps, "issuerKeys")
        used = kid_of(cluster, apps, "svc-tessera-token")
        assert used in published, f"a token carries kid {used}, which the bundle {published} does not hold yet"
        return len(published) == 2

    waiting.until(published_before_used, timeout=60, interval=0.2, what="the next key published")
    second = next(k for k in stored_keys(cluster, home) if k["kid"] != first["kid"])
    takeover = datetime.datetime.fromisoformat(second["signsFrom"])
    assert kid_of(cluster, apps, "svc-tessera-token") == first["kid"]  # it does not sign before its lead is over

    def reissued_by_the_new_key() -> bool:
        published_before_used()
        if datetime.datetime.now(datetime.UTC) < takeover:
            return False
        apply(cluster, apps, SA, "svc", {"token": {"ttlSeconds": 3600, "audiences": ["after-rotation"]}})
        return bool(kid_of(cluster, apps, "svc-tessera-token") == second["kid"])

    waiting.until(reissued_by_the_new_key, timeout=60, what="a token signed by the new key")
    old_token_expiry = takeover + datetime.timedelta(seconds=60)  # the last token the old key signed
    waiting.until(lambda: first["kid"] not in bundle_kids(cluster, apps, "issuerKeys"), timeout=150, what="retired")
    assert datetime.datetime.now(datetime.UTC) >= old_token_expiry + datetime.timedelta(seconds=5)
    assert first["kid"] not in {k["kid"] for k in stored_keys(cluster, home)}


def test_two_replicas_racing_at_start_share_one_key_set_and_a_restart_rewrites_nothing(
    private_cluster: Cluster, operators: list[Operator], tmp_path: Path
) -> None:
    cluster = private_cluster
    home = create_namespace(cluster, "tessera-system")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        racing = [pool.submit(launch, cluster, home, tmp_path / f"replica-{i}.log", operators) for i in range(2)]
        replicas = [r.result() for r in racing]
    [stored] = stored_keys(cluster, home)
    for replica in replicas:
        assert f"Loaded issuer keys ['{stored['kid']}']" in replica.logs()
        stop_operator(replica)
    operators.clear()

    apps = create_namespace(cluster, "apps")
    cluster.core.patch_namespace(apps, {"metadata": {"labels": {settings.TRUST_BUNDLE_LABEL: "enabled"}}})
    for name in ("a", "b", "c"):
        apply(cluster, apps, SA, name, {"allowedCIDRs": ["10.1.0.0/16"]} if name == "a" else {})
    apply(cluster, apps, SAK, "a-key", {"serviceAccountName": "a", "generate": {}})
    launch(cluster, home, tmp_path / "first.log", operators)
    waiting.until(lambda: reason_is(cluster, apps, SAK, "a-key", "KeyGenerated"), what="the key generated")
    waiting.until(lambda: len(bundle_kids(cluster, apps, "serviceAccountKeys")) == 1, what="the key in the bundle")
    for name in ("a", "b", "c"):
        waiting.until(lambda n=name: reason_is(cluster, apps, SA, n, "TokenIssued"), what=f"{name} Ready")  # type: ignore[misc]
    stop_operator(operators.pop())

    secrets_before = cluster.to_dict(cluster.core.list_namespaced_secret(apps))["metadata"]["resourceVersion"]
    launch(cluster, home, tmp_path / "second.log", operators)
    apply(cluster, apps, SA, "probe", {})  # proves the restarted operator reconciles
    waiting.until(lambda: reason_is(cluster, apps, SA, "probe", "TokenIssued"), what="the probe Ready")
    changed = []
    for lister in (cluster.core.list_namespaced_secret, cluster.core.list_namespaced_config_map):
        # Watch for four refresh ticks (2 s each) from before the restart: only the probe's Secret may appear.
        for event in kubernetes.watch.Watch().stream(lister, apps, resource_version=secrets_before, timeout_seconds=8):
            name = event["object"].metadata.name
            if name != "probe-tessera-token":
                changed.append((event["type"], name))
    assert changed == [], changed
    assert bundle(cluster, apps) is not None


def test_a_bundle_over_the_limit_is_not_written_and_the_namespace_is_warned(
    private_cluster: Cluster, operators: list[Operator], tmp_path: Path
) -> None:
    cluster = private_cluster
    home = create_namespace(cluster, "tessera-system")
    # A bundle with two RSA-3072 keys is about 1,800 bytes, with three about 2,500.
    running = launch(cluster, home, tmp_path / "operator.log", operators, TESSERA_BUNDLE_MAX_BYTES="2100")
    apps = create_namespace(cluster, "apps")
    cluster.core.patch_namespace(apps, {"metadata": {"labels": {settings.TRUST_BUNDLE_LABEL: "enabled"}}})
    apply(cluster, apps, SA, "big", {})
    for i in range(2):
        apply(cluster, apps, SAK, f"rsa-{i}", {"serviceAccountName": "big", "generate": {"algorithm": "RS256"}})
    waiting.until(lambda: len(bundle_kids(cluster, apps, "serviceAccountKeys")) == 2, what="two keys published")
    whole = bundle(cluster, apps)
    assert len(json.dumps(whole, separators=(",", ":"))) < 2100
    for i in range(2, 5):
        apply(cluster, apps, SAK, f"rsa-{i}", {"serviceAccountName": "big", "generate": {"algorithm": "RS256"}})
    for i in range(2, 5):
        waiting.until(lambda n=f"rsa-{i}": reason_is(cluster, apps, SAK, n, "KeyGenerated"), what="generated")  # type: ignore[misc]
    # The new keys may arrive in one round or several: one Warning per distinct oversized bundle, never a repeat.
    waiting.until(lambda: warnings(cluster, apps, "TrustBundleTooLarge"), what="a Warning on the namespace")
    # Two more rounds over the same content (any namespace event wakes the publisher): each tries the
    # write again under a new sequence, and neither may warn again.
    for n in range(2):
        before = acted(running, "tessera_bundle_writes_total")
        cluster.core.patch_namespace(apps, {"metadata": {"labels": {"example.com/round": str(n)}}})
        waiting.until(lambda b=before: acted(running, "tessera_bundle_writes_total") > b, what="another round")  # type: ignore[misc]
    warned = warnings(cluster, apps, "TrustBundleTooLarge")
    for event in warned:
        assert event["involvedObject"]["kind"] == "Namespace" and "over the limit of 2100" in event["message"]
        assert (event.get("count") or 1) == 1
    assert len({e["message"] for e in warned}) == len(warned), [e["message"] for e in warned]
    assert bundle(cluster, apps) == whole  # the previous bundle stays whole
    for i in (0, 3, 4):
        cluster.kubectl("delete", "-n", apps, f"serviceaccountkeys.iam.tessera.dev/rsa-{i}")
    back = {cluster.custom_object(apps, SAK, f"rsa-{i}")["status"]["keyId"] for i in (1, 2)}
    waiting.until(lambda: bundle_kids(cluster, apps, "serviceAccountKeys") == back, what="written again once it fits")


def make_peering(cluster: Cluster) -> None:
    """Kopf's peering kinds (the chart's crds/) and the ClusterKopfPeering ``tessera`` the replicas share."""
    cluster.kubectl("apply", "-f", str(Path(__file__).parents[2] / "charts/tessera/crds/kopf.dev_peerings.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/clusterkopfpeerings.kopf.dev")
    peering = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "tessera"}}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(peering))


def test_two_peered_replicas_never_act_at_once(
    private_cluster: Cluster, operators: list[Operator], tmp_path: Path
) -> None:
    """Kopf peering with real operator processes: a replica that acted is paused when one of higher
    priority arrives, and its own background tasks pause with Kopf's handlers (no bundle written
    while paused); when the other goes, it does not resume from its stale view but exits, to be
    started afresh."""
    cluster = private_cluster
    home = create_namespace(cluster, "tessera-system")
    make_peering(cluster)
    first = start_operator(cluster, home, tmp_path / "first.log", args=("--peering", "tessera", "--priority", "10"))
    operators.append(first)
    apps = create_namespace(cluster, "apps")
    cluster.core.patch_namespace(apps, {"metadata": {"labels": {settings.TRUST_BUNDLE_LABEL: "enabled"}}})
    apply(cluster, apps, SA, "svc", {})
    apply(cluster, apps, SA, "short", {"token": {"ttlSeconds": 60}})  # its refresh falls due during the pause
    waiting.until(lambda: reason_is(cluster, apps, SA, "svc", "TokenIssued"), what="the first replica acting")
    waiting.until(lambda: reason_is(cluster, apps, SA, "short", "TokenIssued"), what="short's first token")
    waiting.until(lambda: bundle(cluster, apps), what="its bundle")

    second = start_operator(cluster, home, tmp_path / "second.log", args=("--peering", "tessera", "--priority", "100"))
    operators.append(second)
    waiting.until(lambda: "the background tasks stop writing" in first.logs(), what="the first replica pausing")
    at_pause = {
        "bundles": acted(first, "tessera_bundle_writes_total"),
        "reconciles": acted(first, "tessera_reconcile_duration_seconds_count"),
    }
    apply(cluster, apps, SA, "svc", {"disabled": True})
    subject = f"urn:tessera:serviceaccount:{apps}:svc"
    waiting.until(
        lambda: any(r["sub"] == subject for r in (bundle(cluster, apps) or {}).get("revocations", [])),
        what="the second replica publishing the revocation",
    )
    assert acted(second, "tessera_revocations_added_total")
    waiting.until(
        lambda: acted(second, "tessera_tokens_issued_total") >= 1, timeout=90, what="the second replica refreshing"
    )  # short's refresh came due while the first one was paused: only the second acted on it
    assert acted(first, "tessera_bundle_writes_total") == at_pause["bundles"], "the paused replica wrote a bundle"
    assert acted(first, "tessera_reconcile_duration_seconds_count") == at_pause["reconciles"], "it reconciled"

    stop_operator(second)
    waiting.until(lambda: first.process.poll() is not None, timeout=60, what="the first replica exiting to restart")
    assert first.process.returncode == 0 and "Resuming after a pause: restarting" in first.logs()


def test_a_newer_replica_waits_for_the_older_one(
    private_cluster: Cluster, operators: list[Operator], tmp_path: Path
) -> None:
    """Without explicit priorities (as the chart runs them), the replica that started first acts and a
    later one stands by, also while the first keeps working; it takes over only once the first has
    gone. (A rolling update starts the new Pod while the old one still acts.)"""
    cluster = private_cluster
    home = create_namespace(cluster, "tessera-system")
    make_peering(cluster)
    older = start_operator(cluster, home, tmp_path / "older.log", args=("--peering", "tessera"))
    newer = start_operator(cluster, home, tmp_path / "newer.log", args=("--peering", "tessera"))
    operators.extend([older, newer])
    apps = create_namespace(cluster, "apps")
    for name in ("a", "b", "c"):
        apply(cluster, apps, SA, name, {})
        waiting.until(functools.partial(reason_is, cluster, apps, SA, name, "TokenIssued"), what=f"{name} served")
    assert acted(older, "tessera_tokens_issued_total") >= 3
    assert acted(newer, "tessera_tokens_issued_total") == 0, "the newer replica acted while the older one was active"
    assert acted(newer, "tessera_reconcile_duration_seconds_count") == 0

    stop_operator(older)
    apply(cluster, apps, SA, "after", {})
    waiting.until(lambda: reason_is(cluster, apps, SA, "after", "TokenIssued"), timeout=90, what="the newer one acting")
    assert acted(newer, "tessera_tokens_issued_total") >= 1
