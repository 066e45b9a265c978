"""Healing and outages: how long from damage to repaired, and from an API server outage to current tokens.

On a control plane of its own, with N accounts in an opted-in namespace, each figure next to the API
server's own create -> watch round trip of the same run (the floor of any repair a watch triggers):

- damage -> repaired, p50 and max over repeated damage: a token Secret deleted (until a Secret with a
  token is back), the trust bundle deleted and overwritten with ``{}`` (until its content is back),
  the JWKS and revocations ConfigMaps deleted, the issuer key Secret deleted (until each is back);
- an outage: accounts with 60 s tokens, the API server stopped for longer than their refresh margin
  (every refresh falls due while nobody answers), then started: seconds from "ready again" until each
  account holds a token issued after the outage began (p50, max).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import kubernetes

from tessera.api import meta
from tessera.core import settings
from tessera.envtest import assets, controlplane
from tests import harness, resources, waiting
from tests.bench import common

TTL = 60
OUTAGE_SECONDS = 40.0  # longer than a 60 s token's slack: every refresh falls due while nobody answers


@contextlib.contextmanager
def plane_and_cluster(folder: Path) -> Iterator[tuple[controlplane.ControlPlane, harness.Cluster]]:
    with controlplane.ControlPlane(assets.ensure(), directory=folder) as plane:
        info = plane.start()
        api = harness.client_for(info.kubeconfig)
        api.configuration.connection_pool_maxsize = 16
        cluster = harness.Cluster(
            info.kubeconfig, str(info.kubectl), kubernetes.client.CoreV1Api(api),
            kubernetes.client.CustomObjectsApi(api), api,
        )  # fmt: skip
        cluster.kubectl("apply", "-f", str(harness.CRDS))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(harness.CRDS))
        yield plane, cluster


def _absent_ok(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def repaired(damage: Callable[[], object], whole: Callable[[], bool], count: int) -> dict[str, float]:
    """Damage ``count`` times, each time timing until ``whole()`` holds again."""
    samples = []
    for _ in range(count):
        damage()
        started = time.monotonic()
        waiting.until(whole, timeout=120, interval=0.01, what="repaired")
        samples.append(time.monotonic() - started)
    return common.percentiles(samples)


def create_accounts(cluster: harness.Cluster, namespace: str, names: list[str], spec: dict[str, Any]) -> None:
    def create(name: str) -> None:
        body = {"apiVersion": meta.API_VERSION, "kind": "ServiceAccount", "metadata": {"name": name}, "spec": spec}
        cluster.custom.create_namespaced_custom_object(meta.GROUP, meta.VERSION, namespace, "serviceaccounts", body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, names))
    for name in names:
        waiting.until(lambda n=name: resources.reason_is(cluster, namespace, "serviceaccounts", n, "TokenIssued"),  # type: ignore[misc]
                      timeout=300, what=f"{name} Ready")  # fmt: skip


def damage_figures(cluster: harness.Cluster, system: str, namespace: str, count: int) -> dict[str, Any]:
    core = cluster.core
    token = lambda: resources.token_in(cluster, namespace, "acct-0-tessera-token")  # noqa: E731
    whole_bundle = cluster.configmap_data(namespace, settings.TRUST_BUNDLE_CONFIGMAP)

    def same_bundle() -> bool:  # the data as written (an emptied bundle has no bundle.json to parse)
        return bool(
            _absent_ok(lambda: cluster.configmap_data(namespace, settings.TRUST_BUNDLE_CONFIGMAP)) == whole_bundle
        )

    def data_of(name: str) -> dict[str, str] | None:
        found: dict[str, str] | None = _absent_ok(lambda: cluster.configmap_data(system, name))
        return found

    jwks, stored = data_of(settings.ISSUER_JWKS_CONFIGMAP), data_of(settings.REVOCATIONS_CONFIGMAP)
    keys = cluster.secret(system, settings.ISSUER_KEYS_SECRET)
    empty: Any = {"metadata": {"name": settings.TRUST_BUNDLE_CONFIGMAP, "labels": {meta.MANAGED_BY_LABEL: "tessera"}}}
    return {
        "token_secret_deleted": repaired(
            lambda: core.delete_namespaced_secret("acct-0-tessera-token", namespace), lambda: bool(token()), count
        ),
        "trust_bundle_deleted": repaired(
            lambda: core.delete_namespaced_config_map(settings.TRUST_BUNDLE_CONFIGMAP, namespace), same_bundle, count
        ),
        "trust_bundle_overwritten_empty": repaired(
            lambda: core.replace_namespaced_config_map(settings.TRUST_BUNDLE_CONFIGMAP, namespace, empty),
            same_bundle,
            count,
        ),
        "issuer_jwks_deleted": repaired(
            lambda: core.delete_namespaced_config_map(settings.ISSUER_JWKS_CONFIGMAP, system),
            lambda: data_of(settings.ISSUER_JWKS_CONFIGMAP) == jwks,
            count,
        ),
        "revocations_deleted": repaired(
            lambda: core.delete_namespaced_config_map(settings.REVOCATIONS_CONFIGMAP, system),
            lambda: data_of(settings.REVOCATIONS_CONFIGMAP) == stored,
            count,
        ),
        "issuer_keys_deleted": repaired(
            lambda: core.delete_namespaced_secret(settings.ISSUER_KEYS_SECRET, system),
            lambda: (cluster.secret(system, settings.ISSUER_KEYS_SECRET) or {}).get("data") == (keys or {}).get("data"),
            count,
        ),
    }


def issued_at(cluster: harness.Cluster, namespace: str, name: str) -> int:
    token = resources.token_in(cluster, namespace, f"{name}-tessera-token")
    return int(jwt.decode(token, options={"verify_signature": False})["iat"]) if token else 0


def outage_figures(
    plane: controlplane.ControlPlane, cluster: harness.Cluster, namespace: str, names: list[str]
) -> dict[str, Any]:
    """Stop the API server past every refresh, start it, time until each account's token is current."""
    began = time.time()
    plane.stop_apiserver()
    time.sleep(OUTAGE_SECONDS)  # the outage itself
    plane.start_apiserver()
    back = time.monotonic()
    waited: dict[str, float] = {}
    while len(waited) < len(names) and time.monotonic() - back < 300:
        for name in names:
            if name not in waited and issued_at(cluster, namespace, name) >= int(began):
                waited[name] = time.monotonic() - back
        time.sleep(0.05)
    return {
        "accounts": len(names),
        "token_ttl_s": TTL,
        "outage_s": OUTAGE_SECONDS,
        "current_again_after_api_ready": common.percentiles(list(waited.values())) if waited else None,
        "not_current_after_300_s": len(names) - len(waited),
    }


def healing_bench(accounts: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, plane_and_cluster(Path(tmp) / "cp") as (plane, cluster):
        system = harness.create_namespace(cluster, "tessera-system")
        operator = harness.start_operator(
            cluster, system, Path(tmp) / "operator.log", extra_env={"TESSERA_REFRESH_CHECK_SECONDS": "30"}
        )
        try:
            namespace = harness.create_namespace(cluster, "heal")
            resources.opt_in(cluster, namespace)
            names = [f"acct-{i}" for i in range(accounts)]
            create_accounts(cluster, namespace, names, {"token": {"ttlSeconds": TTL}, "allowedCIDRs": ["10.0.0.0/8"]})
            waiting.until(lambda: resources.bundle(cluster, namespace), what="the bundle")
            resources.apply(cluster, namespace, "serviceaccounts", names[-1], {"disabled": True})  # a revocation
            waiting.until(
                lambda: json.loads(cluster.configmap_data(system, settings.REVOCATIONS_CONFIGMAP)["revocations.json"])[
                    "revocations"
                ],
                what="a stored revocation",
            )
            results: dict[str, Any] = {
                "baseline_configmap_create_to_watch": common.baseline_watch_latency(
                    cluster, harness.create_namespace(cluster, "base"), 20
                ),
                "damage_to_repaired": damage_figures(cluster, system, namespace, repeats),
            }
            results["outage"] = outage_figures(plane, cluster, namespace, names[:-1])
            results["when"] = datetime.datetime.now(datetime.UTC).isoformat()
            return results
        finally:
            harness.stop_operator(operator)
