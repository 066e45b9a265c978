"""Past one machine: a measured model of the operator at 100,000 accounts and 100,000 bindings.

Nothing here needs a cluster. What one operator keeps per object is measured in-process with
tracemalloc at growing sizes (the grants engine, the RoleBinding informer's values, the account
models and token facts the indexes hold), and the engine's build and one change are timed; the
per-object cost of Kopf's own watch (its floor) and the API write rate come from the memory and
grants benches of the same ``make bench`` run. Then a simulation spreads tenants of very different
sizes (a Zipf-like law: a few large ones, many small ones) over 1 to 8 shards with
:func:`tessera.core.sharding.owner`, to see how even the load of the busiest shard is.
"""

from __future__ import annotations

import datetime
import gc
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from tessera.api import serviceaccount as sa_api
from tessera.core import grants, sharding, tokens
from tessera.core.assignments import BindingFacts
from tessera.operator import rolebindings
from tests.bench import grants_scale

TTL_SECONDS = 900  # the default token lifetime
REFRESH_FRACTION = 0.75  # refreshes fall between 70 and 80 % of it


def measured(build: Callable[[], Any]) -> tuple[float, float, Any]:
    """(MiB traced while ``build()`` runs and stays alive, seconds, its result)."""
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    result = build()
    seconds = time.perf_counter() - started
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return size / 2**20, seconds, result


def binding_body(namespace: str, name: str, role: str, members: list[Any]) -> dict[str, Any]:
    status = {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Bound", "message": "Role bound to 3 members.",
             "lastTransitionTime": "2026-11-30T00:00:00Z", "observedGeneration": 1}
        ],
        "memberAssignments": [{"member": m.key, "scope": f"namespaces/{namespace}"} for m in members] * 3,
        "assignmentCount": 9,
    }  # fmt: skip
    spec = {"roleRef": {"name": role}, "members": [grants_scale.principal_member(m) for m in members]}
    meta = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "1"}
    return {"apiVersion": "iam.tessera.dev/v1alpha1", "kind": "RoleBinding", "metadata": meta, "spec": spec,
            "status": status}  # fmt: skip


def account(namespace: str, name: str) -> sa_api.ServiceAccount:
    return sa_api.ServiceAccount.parse(
        {
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1,
                         "resourceVersion": "1", "finalizers": ["iam.tessera.dev/finalizer"]},
            "spec": {"token": {"ttlSeconds": TTL_SECONDS}},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "TokenIssued", "message": "a token was "
                                "issued", "lastTransitionTime": "2026-11-30T00:00:00Z", "observedGeneration": 1}],
                "subject": sa_api.subject_urn(namespace, name), "secretName": f"{name}-tessera-token",
                "tokenExpiresAt": "2026-11-30T00:15:00Z", "tokenRefreshAt": "2026-11-30T00:12:00Z",
                "keyId": "k" * 43, "services": ["a.svc", "b.svc"], "boundIn": [f"{namespace}/rb-1"],
            },
        }
    )  # fmt: skip


def per_object(bindings: int) -> dict[str, Any]:
    """What one operator keeps for ``bindings`` bindings over bindings / 5 principals (half accounts)."""
    model = grants_scale.plan(bindings, max(bindings // 5, 10), max(bindings // 200, 5))
    state = grants_scale.state_of(model)
    engine_mib, build_s, engine = measured(lambda: grants.Engine(state))
    first = next(iter(sorted(model.bindings)))
    role, members = model.bindings[first]
    started = time.perf_counter()
    engine.set_binding(first, BindingFacts(role, (*members[:-1],)))
    step_s = time.perf_counter() - started
    bodies = [binding_body(ns, name, role, members) for (ns, name), (role, members) in model.bindings.items()]
    entries_mib, _, entries = measured(lambda: [rolebindings.binding_entry(body) for body in bodies])
    bodies.clear()
    del entries
    now = datetime.datetime(2026, 11, 30, tzinfo=datetime.UTC)
    facts = tokens.ObservedToken(now, now, now, "k" * 43, "0" * 16, now)
    accounts_mib, _, kept = measured(
        lambda: [(account(ns, name), facts.__class__(**facts.__dict__)) for ns, name in model.accounts]
    )
    del kept
    return {
        "bindings": bindings,
        "accounts": len(model.accounts),
        "grants_engine_mib": round(engine_mib, 1),
        "engine_build_s": round(build_s, 2),
        "engine_one_change_ms": round(step_s * 1000, 3),
        "binding_informer_values_mib": round(entries_mib, 1),
        "account_models_and_token_facts_mib": round(accounts_mib, 1),
        "kib_per_binding": round((engine_mib + entries_mib) * 1024 / bindings, 2),
        "kib_per_account": round(accounts_mib * 1024 / len(model.accounts), 2),
    }


def tenants(count: int, total: int, seed: int = 3) -> dict[str, int]:
    """``count`` namespaces sharing ``total`` objects by a Zipf-like law (the k-th largest ~ 1/k)."""
    rng = random.Random(seed)  # noqa: S311 (a reproducible simulation)
    weights = [1 / (k + 1) for k in range(count)]
    scale = total / sum(weights)
    names = [f"tenant-{rng.getrandbits(40):010x}" for _ in range(count)]
    return {name: max(1, round(w * scale)) for name, w in zip(names, weights, strict=True)}


def shard_balance(sizes: dict[str, int], counts: tuple[int, ...] = (1, 2, 3, 4, 6, 8)) -> dict[str, Any]:
    """Objects per shard when namespaces are spread by rendezvous hashing: the busiest over the mean."""
    found = {}
    for count in counts:
        load = [0] * count
        for namespace, size in sizes.items():
            load[sharding.owner(namespace, count)] += size
        found[str(count)] = {
            "busiest": max(load),
            "mean": sum(load) / count,
            "busiest_over_mean": max(load) / (sum(load) / count),
        }
    return found


def scale_bench(target_accounts: int, target_bindings: int, write_rate: float | None) -> dict[str, Any]:
    """The model at sizes up to the target, the load the target asks for, and the shard simulation."""
    sizes = [per_object(n) for n in (10_000, 50_000, target_bindings)]
    top = sizes[-1]
    refreshes = target_accounts / (REFRESH_FRACTION * TTL_SECONDS)
    writes = 2 * refreshes  # a token Secret and the status that describes it
    tenant_sizes = tenants(2000, target_accounts + target_bindings)
    structures = (
        top["grants_engine_mib"] + top["binding_informer_values_mib"] + top["kib_per_account"] * target_accounts / 1024
    )
    return {
        "per_object": sizes,
        "target": {"accounts": target_accounts, "bindings": target_bindings},
        "tessera_structures_mib_at_target": round(structures, 1),
        "steady_writes_per_s": round(writes, 1),
        "measured_write_rate_per_s": write_rate,
        "shards_for_writes": None if not write_rate else max(1, round(writes / (0.5 * write_rate) + 0.5)),
        "largest_tenant_share": max(tenant_sizes.values()) / sum(tenant_sizes.values()),
        "shard_balance": shard_balance(tenant_sizes),
    }
