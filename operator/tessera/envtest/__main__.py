"""``python -m tessera.envtest build|run|serve|node|images``: binaries, ``make run``, a bare control plane, a real
node, the images it runs."""

from __future__ import annotations

import sys
from pathlib import Path

from tessera.envtest import assets, controlplane, devrun, images, node


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "build"
    try:
        if command == "build":
            print(assets.ensure().directory)
        elif command == "run":
            return devrun.run(Path.cwd())
        elif command == "serve":
            return controlplane.main(argv)
        elif command == "node":
            return node.main(argv[1:])
        elif command == "images":
            for image in (images.pause(), *images.project(Path.cwd())):
                print(f"{image.ref}\t{image.archive}")
        else:
            usage = "python -m tessera.envtest [build|run|serve|node|images]"
            print(f"usage: {usage}; unknown {command!r}", file=sys.stderr)
            return 2
    except (assets.AssetError, images.ImageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
