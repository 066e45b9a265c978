"""Start the operator the way ``tessera operator`` does: settings from the environment, then Kopf."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import secrets

import kopf

from tessera.core import settings as core_settings
from tessera.operator import handlers, kopffixes


class QuietTimers(logging.Filter):
    """Drop Kopf's per-tick "Timer ... succeeded" lines and the per-event "Handler 'bundle-inputs'
    succeeded" lines: a thousand accounts would log thousands a minute and hide what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        routine = (text.startswith("Timer ") and "succeeded" in text) or text in {
            "Handler 'bundle-inputs' succeeded.",
            "Handler 'grants' succeeded.",
        }
        return not (record.levelno <= logging.INFO and routine)


def priority(given: int | None, peering: str | None) -> int:
    """The Kopf peering priority: as given, else random with peering (replicas of equal priority all
    pause, so each needs its own), else 0."""
    if given is not None:
        return given
    return secrets.randbelow(2**31 - 1) + 1 if peering else 0


def run(args: argparse.Namespace) -> int:
    cfg = core_settings.Settings.from_env()
    if args.namespace:
        cfg = dataclasses.replace(cfg, namespace=args.namespace)
    kopffixes.apply()
    registry = kopf.OperatorRegistry()
    handlers.register(registry, cfg)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.FULL, log_prefix=True)
    logging.getLogger("kopf.objects").addFilter(QuietTimers())
    kopf.run(
        registry=registry,
        memo=kopf.Memo(cfg=cfg),
        clusterwide=not args.watch_namespace,
        namespaces=args.watch_namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=priority(args.priority, args.peering),
        liveness_endpoint=args.liveness or None,
    )
    return 0
