"""A real nginx for tests (the proxy in front of the sidecar's auth-request endpoint), without installing it.

Order: ``$TESSERA_NGINX`` (a binary), ``nginx`` on PATH, then the cache: Debian's ``nginx`` package
(it has ``auth_request`` built in) is fetched with ``apt-get download`` and unpacked with
``dpkg-deb -x`` under ``<cache>/nginx/<version>/``; nothing is installed system-wide. If apt has no
package lists yet, ``apt-get update`` runs once first (that needs root, as CI has).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tessera.envtest import assets

PACKAGE = "nginx"


def _download(workdir: Path) -> Path:
    def fetch() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-get", "download", PACKAGE], cwd=workdir, capture_output=True, text=True)

    done = fetch()
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True, text=True)
        done = fetch()
    if done.returncode != 0:
        raise RuntimeError(f"apt-get download {PACKAGE} failed: {done.stderr.strip()}")
    [deb] = workdir.glob(f"{PACKAGE}_*.deb")
    return deb


def ensure() -> Path:
    """The path of an nginx binary with the auth_request module."""
    explicit = os.environ.get("TESSERA_NGINX")
    if explicit:
        return Path(explicit)
    found = shutil.which("nginx")
    if found:
        return Path(found)
    root = assets.cache_root() / "nginx"
    cached = sorted(root.glob("*/usr/sbin/nginx"))
    if cached:
        return cached[-1]
    with tempfile.TemporaryDirectory() as tmp:
        deb = _download(Path(tmp))
        version = deb.name.removeprefix(f"{PACKAGE}_").removesuffix(".deb")
        target = root / version
        staging = root / f".{version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True)
        os.replace(staging, target)
    binary = target / "usr" / "sbin" / "nginx"
    subprocess.run([str(binary), "-V"], check=True, capture_output=True)
    return binary


def main() -> int:
    print(ensure())
    return 0


if __name__ == "__main__":
    sys.exit(main())
