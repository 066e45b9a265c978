"""The Kopf floor: a Kopf operator that watches what Tessera's operator watches and does nothing.

The memory bench runs it over the same objects as Tessera's operator, so "what Kopf itself costs"
is a figure of the same run, not a guess: the same resources (Tessera's kinds, namespaces, token
Secrets selected by label on the server), an index on each (so Kopf holds handlers back until every
object was seen, as it does for Tessera) and an event handler on each; every handler returns at once.
It answers ``--liveness`` like ``tessera operator``, and takes (and ignores) its other options.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import kopf

from tessera.api import meta
from tessera.operator import kopffixes

KINDS = ("serviceaccounts", "serviceaccountkeys", "roles", "rolebindings", "identityproviders")
MANAGED = f"{meta.MANAGED_BY_LABEL}={meta.MANAGED_BY_VALUE}"


async def _nothing(**_: Any) -> None:
    return None


async def _no_index(**_: Any) -> Any:
    return {}


async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.watching.label_selectors["secrets"] = MANAGED
    settings.posting.enabled = False


def main() -> int:
    parser = argparse.ArgumentParser(prog="kopf-floor")
    parser.add_argument("operator")
    parser.add_argument("--liveness", required=True)
    parser.parse_known_args()
    kopffixes.apply()  # the same start-up fix Tessera runs with
    args = parser.parse_known_args()[0]
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(kopf.login_via_client)
    kopf.on.startup(registry=registry)(_startup)
    resources = [(meta.GROUP, meta.VERSION, kind) for kind in KINDS] + [("v1", "namespaces"), ("v1", "secrets")]
    for resource in resources:
        kopf.index(*resource, registry=registry, id="floor")(_no_index)
        kopf.on.event(*resource, registry=registry, id="floor")(_nothing)
    kopf.configure(verbose=False)
    asyncio.run(kopf.operator(registry=registry, clusterwide=True, standalone=True, liveness_endpoint=args.liveness))
    return 0


if __name__ == "__main__":
    sys.exit(main())
