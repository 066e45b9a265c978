"""Ory Hydra, a real OpenID Connect provider for the issuer tests: built once from the Go module proxy.

``go install github.com/ory/hydra/v2@<version>`` fails because Hydra's ``go.mod`` has ``replace``
directives, so a throwaway module requires it and copies the replacements that point at published
modules (the one that points into Hydra's own tree, its generated API client, is left out: the
module proxy serves ``github.com/ory/hydra-client-go/v2`` itself). It is built with the ``sqlite``
tag (cgo, so a C compiler is needed once) so a test can run it with ``DSN=memory`` and no database.

Order: ``$TESSERA_HYDRA`` (a binary), then the cache ``<cache>/hydra/<version>/hydra``, then a build
(about a minute with warm Go caches). The version is pinned here and nowhere else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tessera.envtest import assets

HYDRA_VERSION = "v2.3.0"
MODULE = "github.com/ory/hydra/v2"
TAGS = "sqlite,sqlite_omit_load_extension"


def cached() -> Path:
    return assets.cache_root() / "hydra" / HYDRA_VERSION / "hydra"


def published_replacements(hydra_go_mod: str) -> list[str]:
    """Hydra's ``replace`` lines whose target is a published module (not a folder of its own tree)."""
    found = re.findall(r"^replace\s+(\S+)\s+=>\s+(\S+)\s+(v\S+)\s*$", hydra_go_mod, re.M)
    return [f"replace {old} => {new} {version}" for old, new, version in found]


def _go(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise assets.AssetError(f"go {' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def build(target: Path) -> Path:
    """Build Hydra into ``target``'s folder (staged, then moved, so a broken build leaves no binary)."""
    if shutil.which("go") is None:
        raise assets.AssetError("the 'go' toolchain is not on PATH; it is needed once to build Hydra")
    env = {**os.environ, "CGO_ENABLED": "1", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    print(f"[hydra] building {MODULE}@{HYDRA_VERSION} into {target.parent}", file=sys.stderr, flush=True)
    started = time.monotonic()
    outside = assets.cache_root() / "build"
    outside.mkdir(parents=True, exist_ok=True)
    info = json.loads(_go(["mod", "download", "-json", f"{MODULE}@{HYDRA_VERSION}"], outside, env))
    replacements = tuple(published_replacements(Path(info["GoMod"]).read_text()))
    work = assets.throwaway_module(f"hydra-{HYDRA_VERSION}", "go 1.22", f"{MODULE} {HYDRA_VERSION}", replacements)
    staging = target.parent.with_name(f".{HYDRA_VERSION}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    flags = f"-s -w -X {MODULE}/driver/config.Version={HYDRA_VERSION}"
    _go(["build", "-trimpath", "-tags", TAGS, "-ldflags", flags, "-o", str(staging / "hydra"), MODULE], work, env)
    if target.parent.exists():
        shutil.rmtree(target.parent)
    os.replace(staging, target.parent)
    print(f"[hydra] built in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return target


def ensure() -> Path:
    """The path of a Hydra binary."""
    return assets.explicit_or_cached("TESSERA_HYDRA", cached(), build)


def main() -> int:
    return assets.print_path(ensure)


if __name__ == "__main__":
    sys.exit(main())
