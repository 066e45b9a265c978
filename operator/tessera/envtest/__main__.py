"""``python -m tessera.envtest build|run|serve``: binaries, ``make run``, or a bare control plane."""

from __future__ import annotations

import sys
from pathlib import Path

from tessera.envtest import assets, controlplane, devrun


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "build"
    try:
        if command == "build":
            print(assets.ensure().directory)
        elif command == "run":
            return devrun.run(Path.cwd())
        elif command == "serve":
            return controlplane.main(argv)
        else:
            print(f"usage: python -m tessera.envtest [build|run|serve]; unknown {command!r}", file=sys.stderr)
            return 2
    except assets.AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
