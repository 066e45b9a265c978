"""Grants at scale: thousands of RoleBindings over thousands of principals on a control plane of their own.

Measured, each next to a baseline from the same run:

- cold start: the operator started over objects whose statuses are all empty (every binding and
  account status to write, every token to issue, every bundle to publish): time and API writes.
- one binding change (a member added to a binding in a namespace where it held nothing): time until
  the principal's ServiceAccount status and the namespace's trust bundle both show it, p50/p99; the
  API writes all the changes caused (counted until quiet, past one token-refresh tick).
  Baselines: the pure from-scratch :func:`tessera.core.grants.compute` of the same state, the pure
  incremental :class:`~tessera.core.grants.Engine` step for the same changes, and the API server's
  own create -> watch round trip.
- restart: a new operator process over the same, current, objects: time to its start-up sync and
  the writes it made (it should make none).
- operator RSS after each phase.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes

from tessera.api import meta
from tessera.core import assignments, grants, settings
from tessera.core.assignments import BindingFacts, Principal, RoleFacts
from tessera.operator import handlers
from tests import harness, waiting
from tests.bench import common

ISSUER = "https://login.example.com"
MEMBERS_PER_BINDING = 3
ROLES_PER_NAMESPACE = 10
REFRESH_CHECK_SECONDS = 30.0
QUIET_SECONDS = 3.0


@dataclasses.dataclass(frozen=True)
class Model:
    """The objects the bench creates, generated from a seed."""

    namespaces: list[str]
    accounts: list[tuple[str, str]]
    users: list[str]
    roles: dict[tuple[str, str], dict[str, Any]]
    bindings: dict[tuple[str, str], tuple[str, list[Principal]]]


def principal_member(principal: Principal) -> dict[str, Any]:
    if principal.account is not None:
        return {"serviceAccount": {"namespace": principal.namespace, "name": principal.name}}
    return {"user": {"issuer": principal.issuer, "subject": principal.subject}}


def plan(bindings: int, principals: int, namespaces: int, seed: int = 7) -> Model:
    """Half the principals are ServiceAccounts spread over the namespaces, half are users; every
    binding lists MEMBERS_PER_BINDING distinct principals drawn at random."""
    rng = random.Random(seed)  # noqa: S311 (reproducible bench data, nothing secret)
    names = [f"tenant-{i:03d}" for i in range(namespaces)]
    accounts = [(names[i % namespaces], f"sa-{i:04d}") for i in range(principals // 2)]
    users = [f"user-{i:04d}@example.com" for i in range(principals - len(accounts))]
    everyone = [Principal.service_account(*a) for a in accounts] + [Principal.user(ISSUER, u) for u in users]
    roles = {
        (ns, f"role-{r}"): {
            "permissions": [f"dev.{ns}.things-{r}.read", f"dev.{ns}.things-{r}.write", f"dev.{ns}.*.list"],
            "services": [f"svc-{r}.{ns}.svc"],
        }
        for ns in names
        for r in range(ROLES_PER_NAMESPACE)
    }
    planned = {
        (names[i % namespaces], f"rb-{i:05d}"): (
            f"role-{i % ROLES_PER_NAMESPACE}",
            rng.sample(everyone, MEMBERS_PER_BINDING),
        )
        for i in range(bindings)
    }
    return Model(names, accounts, users, roles, planned)


def state_of(model: Model) -> grants.Inputs:
    return grants.Inputs(
        roles={
            key: RoleFacts(frozenset(spec["permissions"]), frozenset(spec["services"]))
            for key, spec in model.roles.items()
        },
        bindings={key: BindingFacts(role, tuple(members)) for key, (role, members) in model.bindings.items()},
        namespace_services={ns: frozenset({f"{ns}.example.com"}) for ns in model.namespaces},
        accounts=frozenset(model.accounts),
    )


def body(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": meta.API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def create_all(cluster: harness.Cluster, model: Model) -> float:
    """Create namespaces, accounts, roles and bindings (8 at a time); return the seconds it took."""
    started = time.monotonic()
    for ns in model.namespaces:
        labels = {settings.TRUST_BUNDLE_LABEL: settings.TRUST_BUNDLE_LABEL_VALUE}
        annotations = {assignments.SERVICES_ANNOTATION: f"{ns}.example.com"}
        cluster.core.create_namespace(
            kubernetes.client.V1Namespace(
                metadata=kubernetes.client.V1ObjectMeta(name=ns, labels=labels, annotations=annotations)
            )
        )
    jobs: list[tuple[str, str, dict[str, Any]]] = []
    jobs += [(ns, "serviceaccounts", body("ServiceAccount", name, {})) for ns, name in model.accounts]
    jobs += [(ns, "roles", body("Role", name, spec)) for (ns, name), spec in model.roles.items()]
    jobs += [
        (
            ns,
            "rolebindings",
            body("RoleBinding", name, {"roleRef": {"name": role}, "members": [principal_member(m) for m in members]}),
        )
        for (ns, name), (role, members) in model.bindings.items()
    ]

    def create(job: tuple[str, str, dict[str, Any]]) -> None:
        ns, plural, manifest = job
        cluster.custom.create_namespaced_custom_object(meta.GROUP, meta.VERSION, ns, plural, manifest)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(create, jobs))
    return time.monotonic() - started


class Writes:
    """Every write to the objects the operator maintains, seen on cluster-wide watches (one thread each):
    RoleBinding and ServiceAccount statuses, trust bundle ConfigMaps, token Secrets."""

    KINDS = ("rolebindings", "serviceaccounts", "bundles", "secrets")

    def __init__(self, cluster: harness.Cluster) -> None:
        self.events: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self._watches: list[kubernetes.watch.Watch] = []
        for kind in self.KINDS:
            watch = kubernetes.watch.Watch()
            self._watches.append(watch)
            threading.Thread(target=self._run, args=(cluster, kind, watch), daemon=True).start()

    def _stream(self, cluster: harness.Cluster, kind: str, watch: kubernetes.watch.Watch) -> Iterator[Any]:
        events: Iterator[Any]
        if kind in ("rolebindings", "serviceaccounts"):
            listed = cluster.custom.list_cluster_custom_object(meta.GROUP, meta.VERSION, kind, limit=1)
            rv = cluster.to_dict(listed)["metadata"]["resourceVersion"]
            events = watch.stream(
                cluster.custom.list_cluster_custom_object, meta.GROUP, meta.VERSION, kind, resource_version=rv
            )
        elif kind == "bundles":
            rv = cluster.to_dict(cluster.core.list_config_map_for_all_namespaces(limit=1))["metadata"][
                "resourceVersion"
            ]
            events = watch.stream(
                cluster.core.list_config_map_for_all_namespaces,
                resource_version=rv,
                field_selector=f"metadata.name={settings.TRUST_BUNDLE_CONFIGMAP}",
            )
        else:
            rv = cluster.to_dict(cluster.core.list_secret_for_all_namespaces(limit=1))["metadata"]["resourceVersion"]
            selector = f"{meta.MANAGED_BY_LABEL}={meta.MANAGED_BY_VALUE}"
            events = watch.stream(
                cluster.core.list_secret_for_all_namespaces, resource_version=rv, label_selector=selector
            )
        return events

    def _run(self, cluster: harness.Cluster, kind: str, watch: kubernetes.watch.Watch) -> None:
        with contextlib.suppress(Exception):  # the watch ends when stopped
            for _ in self._stream(cluster, kind, watch):
                with self.lock:
                    self.events.append((time.monotonic(), kind))

    def mark(self) -> int:
        with self.lock:
            return len(self.events)

    def since(self, mark: int) -> dict[str, int]:
        with self.lock:
            seen = self.events[mark:]
        return {kind: sum(1 for _, k in seen if k == kind) for kind in self.KINDS}

    def last_since(self, mark: int) -> float | None:
        """When the last write after ``mark`` was seen (monotonic), None when there was none."""
        with self.lock:
            return self.events[-1][0] if len(self.events) > mark else None

    def quiet_for(self, seconds: float) -> bool:
        with self.lock:
            last = self.events[-1][0] if self.events else 0.0
        return time.monotonic() - last >= seconds

    def stop(self) -> None:
        for watch in self._watches:
            watch.stop()


SYNC_LINE = re.compile(
    r"Start-up sync done in ([0-9.]+)s: compared (\d+) RoleBinding and (\d+) account statuses, wrote (\d+)"
)
BUILT_LINE = re.compile(r"Computed the assignments of (\d+) RoleBindings in ([0-9.]+)s")


def start_and_sync(
    cluster: harness.Cluster, system: str, log: Path, writes: Writes, timeout: float
) -> tuple[harness.Operator, dict[str, Any]]:
    """Start an operator; time until its start-up sync line and until its writes stop."""
    mark = writes.mark()
    started = time.monotonic()
    operator = harness.start_operator(
        cluster, system, log, extra_env={"TESSERA_REFRESH_CHECK_SECONDS": str(REFRESH_CHECK_SECONDS)}
    )
    synced = waiting.until(
        lambda: SYNC_LINE.search(operator.logs()), timeout=timeout, interval=0.05, what="the start-up sync"
    )
    synced_at = time.monotonic() - started
    built = BUILT_LINE.search(operator.logs())
    assert built is not None
    waiting.until(lambda: writes.quiet_for(QUIET_SECONDS), timeout=timeout, interval=0.2, what="quiet")
    return operator, {
        "process_start_to_sync_s": synced_at,
        "engine_build_s_reported": float(built.group(2)),
        "sync_s_reported": float(synced.group(1)),
        "statuses_compared": int(synced.group(2)) + int(synced.group(3)),
        "statuses_written_by_sync": int(synced.group(4)),
        "process_start_to_last_write_s": None if (last := writes.last_since(mark)) is None else last - started,
        "api_writes_until_quiet": writes.since(mark),
        **{f"operator_{k}": v for k, v in common.memory_kib(operator.process.pid).items()},
    }


FLOOR_THREADS = handlers.WORKERS  # as many concurrent calls as the operator's own API client makes


def api_floor(cluster: harness.Cluster, model: Model) -> dict[str, Any]:
    """The API server's floor under the cold start: the same kinds and numbers of writes the cold start
    made, from a plain client with as many threads as the operator's client and nothing else to do (run with the
    operator stopped, on the same control plane and watches). A status patch on every binding and
    account, a metadata patch on every account (as its finalizer), a Secret per account, a ConfigMap
    the size of its bundle per namespace. Every write changes the object, so none is a no-op."""
    bundles = {ns: cluster.configmap_data(ns, settings.TRUST_BUNDLE_CONFIGMAP) for ns in model.namespaces}
    token = "x" * 900  # about a signed token's size
    jobs: list[Callable[[], object]] = []
    for n, (ns, name) in enumerate(model.bindings):
        body = {"status": {"observedGeneration": 1000 + n}}
        jobs.append(
            functools.partial(
                cluster.custom.patch_namespaced_custom_object_status,
                meta.GROUP,
                meta.VERSION,
                ns,
                "rolebindings",
                name,
                body,
            )
        )
    for n, (ns, name) in enumerate(model.accounts):
        status = {"status": {"observedGeneration": 1000 + n}}
        marked = {"metadata": {"annotations": {"bench.tessera.dev/floor": str(n)}}}
        secret = kubernetes.client.V1Secret(
            metadata=kubernetes.client.V1ObjectMeta(
                name=f"floor-{name}", labels={meta.MANAGED_BY_LABEL: meta.MANAGED_BY_VALUE}
            ),
            string_data={"token": token},
        )
        jobs += [
            functools.partial(
                cluster.custom.patch_namespaced_custom_object,
                meta.GROUP,
                meta.VERSION,
                ns,
                "serviceaccounts",
                name,
                marked,
            ),
            functools.partial(cluster.core.create_namespaced_secret, ns, secret),
            functools.partial(
                cluster.custom.patch_namespaced_custom_object_status,
                meta.GROUP,
                meta.VERSION,
                ns,
                "serviceaccounts",
                name,
                status,
            ),
        ]
    for ns, data in bundles.items():
        jobs.append(
            functools.partial(
                cluster.core.create_namespaced_config_map,
                ns,
                kubernetes.client.V1ConfigMap(metadata=kubernetes.client.V1ObjectMeta(name="floor-bundle"), data=data),
            )
        )
    random.Random(5).shuffle(jobs)  # noqa: S311 (an order, nothing secret)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=FLOOR_THREADS) as pool:
        list(pool.map(lambda job: job(), jobs))
    return {"writes": len(jobs), "threads": FLOOR_THREADS, "seconds": time.monotonic() - started}


def pick_changes(model: Model, count: int, seed: int = 11) -> list[tuple[tuple[str, str], Principal]]:
    """(binding, account) pairs: a ServiceAccount added to a binding of a namespace where it is bound nowhere."""
    rng = random.Random(seed)  # noqa: S311 (reproducible bench data, nothing secret)
    bound: dict[str, set[str]] = {}
    for (ns, _), (_, members) in model.bindings.items():
        for member in members:
            bound.setdefault(member.key, set()).add(ns)
    by_namespace: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(model.bindings):
        by_namespace.setdefault(key[0], []).append(key)
    candidates = [a for a in model.accounts if set(by_namespace) - bound.get(Principal.service_account(*a).key, set())]
    if len(candidates) < count:
        raise SystemExit(f"only {len(candidates)} accounts are unbound somewhere; use more tenants or fewer changes")
    changes = []
    for account in rng.sample(candidates, count):
        principal = Principal.service_account(*account)
        free = sorted(set(by_namespace) - bound.get(principal.key, set()))
        changes.append((rng.choice(by_namespace[rng.choice(free)]), principal))
    return changes


class Seen:
    """When a predicate first held on a watched object (a thread running one watch)."""

    def __init__(self, stream: Iterator[Any], check: Callable[[Any], bool], watch: kubernetes.watch.Watch) -> None:
        self.at: float | None = None
        self.connected = threading.Event()  # set by the first event: the object's state when the watch began
        self._watch = watch
        self._thread = threading.Thread(target=self._run, args=(stream, check), daemon=True)
        self._thread.start()

    def _run(self, stream: Iterator[Any], check: Callable[[Any], bool]) -> None:
        with contextlib.suppress(Exception):
            for event in stream:
                self.connected.set()
                if check(event["object"]):
                    self.at = time.monotonic()
                    return

    def stop(self) -> None:
        self._watch.stop()


def watch_account(cluster: harness.Cluster, principal: Principal, binding: str) -> Seen:
    watch = kubernetes.watch.Watch()
    assert principal.namespace and principal.name
    stream = watch.stream(
        cluster.custom.list_namespaced_custom_object, meta.GROUP, meta.VERSION, principal.namespace, "serviceaccounts",
        field_selector=f"metadata.name={principal.name}", timeout_seconds=60,
    )  # fmt: skip
    return Seen(stream, lambda obj: binding in ((obj.get("status") or {}).get("boundIn") or []), watch)


def watch_bundle(cluster: harness.Cluster, namespace: str, principal: Principal) -> Seen:
    watch = kubernetes.watch.Watch()
    stream = watch.stream(
        cluster.core.list_namespaced_config_map, namespace,
        field_selector=f"metadata.name={settings.TRUST_BUNDLE_CONFIGMAP}", timeout_seconds=60,
    )  # fmt: skip
    return Seen(stream, lambda cm: f'"{principal.key}"' in (cm.data or {}).get("bundle.json", ""), watch)


def measure_changes(
    cluster: harness.Cluster, model: Model, changes: list[tuple[tuple[str, str], Principal]]
) -> list[float]:
    samples = []
    for (ns, name), principal in changes:
        role, members = model.bindings[(ns, name)]
        account, bundle = watch_account(cluster, principal, f"{ns}/{name}"), watch_bundle(cluster, ns, principal)
        for seen in (account, bundle):  # a watch without a resourceVersion starts with the current state
            waiting.until(seen.connected.is_set, timeout=30, interval=0.002, what="the watch connected")
        spec = {"spec": {"members": [principal_member(m) for m in [*members, principal]]}}
        started = time.monotonic()
        cluster.custom.patch_namespaced_custom_object(meta.GROUP, meta.VERSION, ns, "rolebindings", name, spec)
        waiting.until(lambda a=account, b=bundle: a.at and b.at, timeout=60, interval=0.002, what="status and bundle")  # type: ignore[misc]
        assert account.at is not None and bundle.at is not None
        samples.append(max(account.at, bundle.at) - started)
        account.stop()
        bundle.stop()
        model.bindings[(ns, name)] = (role, [*members, principal])
    return samples


def pure_figures(model: Model, changes: list[tuple[tuple[str, str], Principal]]) -> dict[str, Any]:
    """The same computation without the API: from scratch, and one incremental step per change."""
    state = state_of(model)
    started = time.perf_counter()
    grants.compute(state)
    compute_s = time.perf_counter() - started
    started = time.perf_counter()
    engine = grants.Engine(state)
    build_s = time.perf_counter() - started
    steps = []
    for (ns, name), principal in changes:
        facts = state.bindings[(ns, name)]
        started = time.perf_counter()
        engine.set_binding((ns, name), BindingFacts(facts.role, (*facts.members, principal)))
        steps.append(time.perf_counter() - started)
    return {"compute_from_scratch_s": compute_s, "engine_build_s": build_s, "engine_step": common.percentiles(steps)}


def grants_bench(bindings: int, principals: int, namespaces: int, changes: int) -> dict[str, Any]:
    model = plan(bindings, principals, namespaces)
    chosen = pick_changes(model, changes)
    results: dict[str, Any] = {
        "bindings": bindings,
        "principals": principals,
        "service_accounts": len(model.accounts),
        "users": len(model.users),
        "namespaces": namespaces,
        "roles": len(model.roles),
        "members_per_binding": MEMBERS_PER_BINDING,
        "pure": pure_figures(plan(bindings, principals, namespaces), chosen),
    }
    with tempfile.TemporaryDirectory() as tmp, harness.local_cluster(Path(tmp) / "cp", pool=FLOOR_THREADS) as cluster:
        system = harness.create_namespace(cluster, "tessera-system")
        results["create_objects_s"] = create_all(cluster, model)
        writes = Writes(cluster)
        operator, results["cold_start"] = start_and_sync(cluster, system, Path(tmp) / "cold.log", writes, timeout=1800)
        try:
            results["baseline_configmap_create_to_watch"] = common.baseline_watch_latency(cluster, system, 30)
            mark = writes.mark()
            results["binding_change_to_status_and_bundle"] = common.percentiles(measure_changes(cluster, model, chosen))
            waiting.until(lambda: writes.quiet_for(REFRESH_CHECK_SECONDS + 5), timeout=300, interval=0.5, what="quiet")
            caused = writes.since(mark)
            caused["rolebindings"] -= changes  # the changes themselves
            results["api_writes_per_change"] = {kind: n / changes for kind, n in caused.items()}
            results["operator_rss_kib_after_changes"] = common.rss_kib(operator.process.pid)
        finally:
            harness.stop_operator(operator)
        operator, results["restart"] = start_and_sync(cluster, system, Path(tmp) / "warm.log", writes, timeout=600)
        harness.stop_operator(operator)
        results["api_floor"] = api_floor(cluster, model)
        writes.stop()
    cold = results["cold_start"]["process_start_to_last_write_s"]
    results["cold_start_last_write_over_api_floor"] = cold / results["api_floor"]["seconds"] if cold else None
    change_p50 = results["binding_change_to_status_and_bundle"]["p50_ms"]
    results["change_p50_over_baseline_p50"] = change_p50 / results["baseline_configmap_create_to_watch"]["p50_ms"]
    results["change_p50_over_pure_compute_from_scratch"] = change_p50 / (
        results["pure"]["compute_from_scratch_s"] * 1000
    )
    return results
