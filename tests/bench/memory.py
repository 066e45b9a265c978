"""Where the operator's memory goes, by allocation site, at its peak and at rest (tracemalloc).

The grants-scale objects (10,000 RoleBindings over 2,000 principals by default) are created on a
control plane of their own; then, each in turn over the same objects:

- Tessera's operator, cold (every status to write) and restarted (all current), run under
  tracemalloc (:mod:`tests.bench.traced`): a snapshot at the traced peak and one at rest (after its
  writes stopped), each next to the process's resident memory at that moment;
- the Kopf floor (:mod:`tests.bench.kopf_floor`): Kopf watching the same resources with empty
  handlers and indexes, untraced and traced: what Kopf itself costs on these objects.

Each snapshot is summarised by category (whose code allocated the block: Kopf's per-object machinery,
the bodies of listed and watched objects, the Kubernetes client, Tessera's own structures, ...) and
by the top allocation sites. tracemalloc sees Python allocations only; resident memory minus the
traced total is the interpreter and the imported modules (tracing starts after the imports; their
resident memory is given), C libraries, thread stacks and allocator fragmentation.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests import harness, waiting
from tests.bench import common, grants_scale

TOP_SITES = 25

# (category, path fragment of a frame): the first rule any frame of a traceback matches wins, so the
# more specific come first. Frames are searched from where the block was allocated outwards.
RULES: tuple[tuple[str, str], ...] = (
    ("imports (modules loaded on first use)", "<frozen importlib._bootstrap"),
    ("tracemalloc sampler", "tests/bench/traced.py"),
    ("Tessera: grants engine", "tessera/core/grants.py"),
    ("Tessera: grants engine", "tessera/core/assignments.py"),
    ("Tessera: index values", "tessera/operator/rolebindings.py"),
    ("Tessera: index values", "tessera/operator/serviceaccounts.py"),
    ("Tessera: index values", "tessera/operator/accountkeys.py"),
    ("Tessera: index values", "tessera/operator/index"),
    ("Tessera: trust bundles", "tessera/operator/publisher.py"),
    ("Tessera: trust bundles", "tessera/core/bundles.py"),
    ("Kubernetes client (models, deserialisation, pool)", "site-packages/kubernetes/"),
    ("Kubernetes client (models, deserialisation, pool)", "site-packages/urllib3/"),
    ("Tessera: other", "/tessera/"),
    ("Kopf: per-object memories (memo copies, throttlers)", "kopf/_core/reactor/inventory.py"),
    ("Kopf: indexes", "kopf/_core/engines/indexing.py"),
    ("Kopf: timers and daemons", "kopf/_core/engines/daemons.py"),
    ("Kopf: per-object workers and queues", "kopf/_core/reactor/queueing.py"),
    ("Kopf: object bodies from listings and watches", "kopf/_cogs/clients/"),
    ("Kopf: handler processing (bodies, patches, causes, loggers)", "kopf/_core/"),
    ("Kopf: other", "/kopf/"),
    ("aiohttp", "site-packages/aiohttp/"),
    ("pydantic", "site-packages/pydantic"),
)
PACKAGES = ("/tessera/", "/kopf/", "/kubernetes/", "/urllib3/", "/aiohttp/", "/pydantic", "/tests/")


def category(frames: Iterable[tracemalloc.Frame]) -> str:
    names = [frame.filename for frame in frames]
    for label, fragment in RULES:
        if any(fragment in name for name in names):
            return label
    return "other (standard library, asyncio)"


def site(traceback: tracemalloc.Traceback) -> str:
    """The innermost frame in a package of interest (else the innermost frame): file:line."""
    chosen = next((f for f in traceback if any(p in f.filename for p in PACKAGES)), traceback[0])
    short = chosen.filename.split("site-packages/")[-1].split("operator/")[-1]
    return f"{short}:{chosen.lineno}"


def summarise(path: Path) -> dict[str, Any]:
    """A snapshot file (and the resident memory saved beside it) by category and by site, in MiB."""
    snapshot = tracemalloc.Snapshot.load(str(path))
    by_category: dict[str, int] = {}
    by_site: dict[str, int] = {}
    for stat in snapshot.statistics("traceback"):
        label = category(stat.traceback)
        by_category[label] = by_category.get(label, 0) + stat.size
        where = f"{label} @ {site(stat.traceback)}"
        by_site[where] = by_site.get(where, 0) + stat.size
    info = json.loads(path.with_suffix("").with_suffix(".json").read_text())
    mib = 1024 * 1024
    traced = sum(by_category.values())
    return {
        "rss_mib": info["rss_kib"] / 1024,
        "traced_mib": traced / mib,
        "not_traced_mib": info["rss_kib"] / 1024 - traced / mib,
        "by_category_mib": {k: round(v / mib, 1) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "top_sites_mib": {k: round(v / mib, 1) for k, v in sorted(by_site.items(), key=lambda kv: -kv[1])[:TOP_SITES]},
    }


def _until(check: Any, timeout: float, what: str) -> bool:
    """Whether ``check`` held within ``timeout`` (a bench records a miss instead of failing)."""
    try:
        waiting.until(check, timeout=timeout, interval=0.2, what=what)
    except AssertionError:
        return False
    return True


def _traced_run(
    cluster: harness.Cluster, system: str, folder: Path, writes: grants_scale.Writes, module: str, timeout: float
) -> dict[str, Any]:
    """Run ``module`` (``tessera.cli`` or the Kopf floor) traced until its writes stop (or ``timeout``);
    snapshot it at rest; summarise both snapshots."""
    folder.mkdir(parents=True)
    launcher = ("-m", "tests.bench.traced", str(folder), module)
    mark, started = writes.mark(), time.monotonic()
    try:
        operator = harness.start_operator(
            cluster, system, folder / "operator.log", launcher=launcher, ready_timeout=timeout
        )
    except AssertionError:
        print((folder / "operator.log").read_text()[-5000:])
        raise
    try:
        synced = module != "tessera.cli" or _until(
            lambda: grants_scale.SYNC_LINE.search(operator.logs()), timeout, "the start-up sync"
        )
        quiet = _until(lambda: writes.quiet_for(grants_scale.QUIET_SECONDS), timeout, "quiet")
        time.sleep(10)  # let Kopf's idle workers exit (after 5 s)
        os.kill(operator.process.pid, signal.SIGUSR1)
        waiting.until(lambda: (folder / "rest.json").exists(), timeout=900, interval=0.5, what="the rest snapshot")
        peak_rss = common.memory_kib(operator.process.pid)["peak_rss_kib"]
    finally:
        harness.stop_operator(operator)
    return {
        "rss_mib_after_imports_untraced": json.loads((folder / "imports.json").read_text())["rss_kib"] / 1024,
        "peak_rss_mib_traced_process": peak_rss / 1024,
        "sync_reached_under_tracing": synced,
        "quiet_reached": quiet,
        "seconds_traced": time.monotonic() - started,
        "writes": writes.since(mark),
        "peak": summarise(folder / "peak.snap") if (folder / "peak.snap").exists() else None,
        "rest": summarise(folder / "rest.snap"),
    }


def _settle(cluster: harness.Cluster, system: str, folder: Path, writes: grants_scale.Writes) -> None:
    """Finish a cold start untraced (when tracing made it too slow), so the restart finds every status current."""
    operator, _ = grants_scale.start_and_sync(cluster, system, folder / "settle.log", writes, timeout=1800)
    harness.stop_operator(operator)


def _untraced_floor(cluster: harness.Cluster, system: str, folder: Path, writes: grants_scale.Writes) -> dict[str, Any]:
    launcher = ("-m", "tests.bench.kopf_floor")
    operator = harness.start_operator(cluster, system, folder / "floor.log", launcher=launcher)
    try:
        waiting.until(lambda: writes.quiet_for(grants_scale.QUIET_SECONDS), timeout=600, interval=0.2, what="quiet")
        time.sleep(10)  # idle workers exit after 5 s
        return {k: v / 1024 for k, v in common.memory_kib(operator.process.pid).items()}
    finally:
        harness.stop_operator(operator)


def memory_bench(bindings: int, principals: int, namespaces: int) -> dict[str, Any]:
    model = grants_scale.plan(bindings, principals, namespaces)
    results: dict[str, Any] = {"bindings": bindings, "principals": principals, "namespaces": namespaces}
    with tempfile.TemporaryDirectory() as tmp, harness.local_cluster(Path(tmp) / "cp", pool=16) as cluster:
        system = harness.create_namespace(cluster, "tessera-system")
        grants_scale.create_all(cluster, model)
        writes = grants_scale.Writes(cluster)
        try:
            results["tessera_cold"] = _traced_run(cluster, system, Path(tmp) / "cold", writes, "tessera.cli", 900)
            if not results["tessera_cold"]["sync_reached_under_tracing"]:
                _settle(cluster, system, Path(tmp), writes)
            results["tessera_restart"] = _traced_run(cluster, system, Path(tmp) / "warm", writes, "tessera.cli", 900)
            results["kopf_floor_untraced_mib"] = _untraced_floor(cluster, system, Path(tmp), writes)
            results["kopf_floor"] = _traced_run(
                cluster, system, Path(tmp) / "floor", writes, "tests.bench.kopf_floor", 600
            )
        finally:
            writes.stop()
    return results
