"""``tessera``: one command, several roles. Each role imports only what it needs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _crds(args: argparse.Namespace) -> int:
    from tessera.api import kinds

    for path in kinds.write(Path(args.out)):
        print(path)
    return 0


def _operator(args: argparse.Namespace) -> int:
    from tessera.operator import runner

    return runner.run(args)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tessera", description="Identity and access management for workloads on Kubernetes."
    )
    sub = top.add_subparsers(dest="command", required=True)
    op = sub.add_parser("operator", help="run the operator against the current cluster")
    op.add_argument("--namespace", help="the operator's own namespace (issuer keys live there); env TESSERA_NAMESPACE")
    op.add_argument("--watch-namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    op.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="Kopf liveness endpoint ('' disables)")
    op.add_argument("--peering", default=None, help="Kopf peering object name for HA; default: standalone")
    op.add_argument("--verbose", action="store_true", help="log each handler step")
    op.set_defaults(func=_operator)
    crds = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the models")
    crds.add_argument("--out", default="crds", help="folder to write into (default: crds)")
    crds.set_defaults(func=_crds)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
