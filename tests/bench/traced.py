"""Run ``tessera`` (or a module's ``main``) under tracemalloc, for the memory bench.

``python -m tests.bench.traced <folder> <module> [args...]`` imports ``<module>`` and what the operator
imports, then starts tracemalloc with a few frames per allocation (tracing the imports would make
them 5 to 25 times slower; the resident memory once they are done is saved as ``imports.json``), and
calls ``<module>.main()`` with ``args``. A thread samples the traced total
every half second and saves a snapshot whenever it reaches a new peak (``peak.snap``, with the
process's resident memory beside it in ``peak.json``); SIGUSR1 saves one at once (``rest.snap``,
``rest.json``), for "at rest". Snapshots are written by the thread, never by the event loop.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
import tracemalloc
from pathlib import Path

FRAMES = 6
SAMPLE_SECONDS = 0.5
NEW_PEAK = 1.25  # save again only when the traced total grew by a quarter
LAZY_CLIENT_CLASSES = (
    "CoreV1Api", "CustomObjectsApi", "AuthenticationV1Api", "CoordinationV1Api", "VersionApi",
    "V1Secret", "V1SecretList", "V1ConfigMap", "V1ConfigMapList", "V1ObjectMeta", "V1ManagedFieldsEntry",
    "V1OwnerReference", "V1Status", "V1StatusDetails", "V1StatusCause", "V1ListMeta", "CoreV1Event",
    "V1ObjectReference", "V1EventSource", "V1Namespace", "V1NamespaceList", "VersionInfo",
)  # fmt: skip
FIRST_PEAK = 64 * 1024 * 1024  # nothing below this is worth a snapshot (each one stops the process for a while)


def _rss_kib() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "peak_rss_kib": int(fields["VmHWM"].split()[0])}


def _save(folder: Path, name: str) -> None:
    rss = _rss_kib()  # before the snapshot, which itself takes memory
    traced, peak = tracemalloc.get_traced_memory()
    snapshot = tracemalloc.take_snapshot()
    snapshot.dump(str(folder / f"{name}.snap.tmp"))
    os.replace(folder / f"{name}.snap.tmp", folder / f"{name}.snap")
    info = {**rss, "traced_kib": traced // 1024, "traced_peak_kib": peak // 1024, "at": time.time()}
    (folder / f"{name}.json").write_text(json.dumps(info))


def _sampler(folder: Path, rest: threading.Event) -> None:
    best = FIRST_PEAK
    while True:
        if rest.wait(SAMPLE_SECONDS):
            rest.clear()
            _save(folder, "rest")
            continue
        traced, _ = tracemalloc.get_traced_memory()
        if traced > best * NEW_PEAK:
            best = traced
            _save(folder, "peak")


def main() -> None:
    folder, module, *args = sys.argv[1:]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    entry = importlib.import_module(module)
    for heavy in ("kopf", "kubernetes", "aiohttp", "tessera.operator.handlers"):
        importlib.import_module(heavy)
    # The Kubernetes client imports its API classes and models on first use; the ones every operator
    # run uses are imported here, untraced, like the rest.
    client = importlib.import_module("kubernetes.client")
    for name in LAZY_CLIENT_CLASSES:
        getattr(client, name)
    (out / "imports.json").write_text(json.dumps(_rss_kib()))
    tracemalloc.start(FRAMES)
    rest = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: rest.set())
    threading.Thread(target=_sampler, args=(out, rest), name="tracemalloc-sampler", daemon=True).start()
    sys.argv = [module, *args]
    sys.exit(entry.main())


if __name__ == "__main__":
    main()
