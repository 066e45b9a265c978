"""Start the operator the way ``tessera operator`` does: settings from the environment, then Kopf."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import logging
import sys
import time

import kopf

from tessera.core import settings as core_settings
from tessera.operator import allocator, handlers, kopffixes, runtime


class QuietTimers(logging.Filter):
    """Drop Kopf's per-event "Handler 'queue' succeeded" lines (and per-tick timer lines): every event
    of every object would log one, thousands a minute, and hide what happened."""

    ROUTINE = frozenset(f"Handler '{handler_id}' succeeded." for handler_id in handlers.EVENT_HANDLER_IDS)

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        routine = (text.startswith("Timer ") and "succeeded" in text) or text in self.ROUTINE
        return not (record.levelno <= logging.INFO and routine)


SENIORITY_BASE = 2**62  # peering priorities stay positive int64 for the next 100,000 years


def priority(given: int | None, peering: str | None, started_ns: int) -> int:
    """The Kopf peering priority: as given, else by seniority with peering, else 0.

    The live replica with the highest priority acts. The earlier a replica started, the higher its
    priority (microseconds, so no two replicas tie: Kopf pauses every replica of equal priority), so a
    new replica (a rolling update, a scale-up) waits until the active one has gone instead of taking
    over while it still acts: Kopf has no per-object locks, and two replicas acting at once for even a
    moment could each issue a token."""
    if given is not None:
        return given
    return SENIORITY_BASE - started_ns // 1000 if peering else 0


def peering_refusal(peering: str | None, fix_installed: bool, kopf_version: str) -> str | None:
    """Why the operator must not start (None: it may). With peering, a paused replica's own tasks
    (publisher, rotation, keeper, work queue) pause through the hook the Kopf fix installs; without
    it a standby would write beside the active replica, so it refuses instead of losing that quietly."""
    if peering is None or fix_installed:
        return None
    return (
        f"--peering needs the pause hook of tessera.operator.kopffixes, which Kopf {kopf_version} does not have "
        f"(checked: {', '.join(kopffixes.CHECKED_VERSIONS)}x); run one replica without peering, or that Kopf"
    )


def run(args: argparse.Namespace) -> int:
    allocator.limit_arenas()  # before any thread starts
    cfg = core_settings.Settings.from_env()
    if args.namespace:
        cfg = dataclasses.replace(cfg, namespace=args.namespace)
    version = importlib.metadata.version("kopf")
    refusal = peering_refusal(args.peering, kopffixes.apply(version), version)
    if refusal is not None:
        print(f"tessera operator: {refusal}", file=sys.stderr)
        return 2
    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.FULL, log_prefix=True)
    logging.getLogger("kopf.objects").addFilter(QuietTimers())
    kopf.run(
        registry=registry,
        memo=runtime.Runtime(cfg, args.metrics, args.watch_namespace),
        clusterwide=not args.watch_namespace,
        namespaces=args.watch_namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=priority(args.priority, args.peering, time.time_ns()),
        liveness_endpoint=args.liveness or None,
    )
    return 0
