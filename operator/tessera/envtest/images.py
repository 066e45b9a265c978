"""Container images for the real node, made here without a registry, cached by content.

No image can be pulled on these machines, so every image a test Pod runs is built from what is
reachable (Debian packages, PyPI, the C compiler) with ``buildah`` (no daemon), written as a
docker-archive under ``<cache>/images/`` and imported into the node's containerd at start:

- **pause**: the Pod sandbox's process, a few lines of C linked statically;
- **base**: Debian (debootstrap ``minbase`` + python3) standing in for the Dockerfile's
  ``python:3.11-slim``, passed as the ``BASE_IMAGE`` build argument;
- **tessera**: the repository's ``Dockerfile`` as it is, built with no network: the locked
  dependencies come from a wheelhouse that pip on the host downloads from ``requirements.lock``
  and that is mounted into the build with a ``pip.conf`` pointing at it;
- images of test apps: a folder with a Containerfile ``FROM ${BASE_IMAGE}``, on the same base.

Each image's tag is a digest of its inputs (sources, lock file, base image), so an unchanged image is
a cache hit and a changed input builds only what depends on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tessera.envtest import assets, hostpkgs

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3")
# What the Dockerfile's context holds (mirrors .dockerignore; a unit test keeps the two equal).
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "requirements.lock", "operator")
LOCK_FILE = "requirements.lock"
PYTHON_TAG = "3.11"  # the base image's Python, which the wheelhouse is downloaded for
GLIBC_MINOR = 36  # the base image's glibc (2.36): wheels for any manylinux up to it fit

PAUSE_C = r"""
/* The process that holds a Pod's namespaces: sleeps, reaps orphans, exits on SIGINT/SIGTERM. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
static void quit(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"""


class ImageError(RuntimeError):
    """An image could not be built (the message carries the failing command's output)."""


@dataclasses.dataclass(frozen=True)
class Image:
    """A built image: its reference (``localhost/<name>:<content digest>``) and its docker-archive."""

    ref: str
    archive: Path

    @property
    def repository(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.ref.rsplit(":", 1)[1]


def images_dir() -> Path:
    return assets.cache_root() / "images"


def _log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def _run(cmd: list[str], **kwargs: object) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise ImageError(f"{' '.join(cmd[:6])} ... failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    out: str = done.stdout
    return out


def buildah(*args: str) -> str:
    """buildah with its storage in the cache (never the machine's /var/lib/containers) and runc."""
    hostpkgs.ensure()  # buildah, runc and debootstrap are Debian packages a bare machine lacks
    storage = assets.cache_root() / "buildah"
    cmd = ["buildah", "--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "overlay"]
    return _run([*cmd, *args], env={**os.environ, "BUILDAH_RUNTIME": "runc", "BUILDAH_ISOLATION": "oci"})


def digest(*parts: bytes | str) -> str:
    """A short content digest of ``parts`` (each length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:16]


def _tree_files(root: Path, names: tuple[str, ...]) -> Iterator[Path]:
    for name in names:
        path = root / name
        if path.is_file():
            yield path
        elif path.is_dir():
            for found in sorted(path.rglob("*")):
                parts = set(found.relative_to(root).parts)
                if found.is_file() and "__pycache__" not in parts and not any(p.endswith(".egg-info") for p in parts):
                    yield found


def tree_digest(root: Path, names: tuple[str, ...], *extra: str) -> str:
    """Digest of the files under ``names`` (relative paths and bytes), plus ``extra`` strings."""
    parts: list[bytes | str] = list(extra)
    for path in _tree_files(root, names):
        parts += [str(path.relative_to(root)), path.read_bytes()]
    return digest(*parts)


def _present(ref: str) -> bool:
    try:
        return bool(buildah("images", "--quiet", ref).strip())
    except ImageError:
        return False


def _load(image: Image) -> None:
    """Put a cached image back into buildah's storage (to build on it) from its archive."""
    if not _present(image.ref):
        buildah("pull", "--quiet", f"docker-archive:{image.archive}")


KEEP_VERSIONS = 2  # archives kept per image name; older ones (and their buildah copies) are removed


def _export(ref: str, archive: Path) -> Image:
    """Write ``ref`` as a docker-archive, then drop all but the newest archives of the same name."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    staging = archive.with_suffix(".partial")
    staging.unlink(missing_ok=True)
    buildah("push", "--quiet", ref, f"docker-archive:{staging}:{ref}")
    os.replace(staging, archive)
    name = ref.rsplit(":", 1)[0].removeprefix("localhost/")
    versions = sorted(archive.parent.glob(f"{name}-" + "?" * 16 + ".tar"), key=lambda p: p.stat().st_mtime)
    for old in versions[:-KEEP_VERSIONS]:
        with contextlib.suppress(ImageError):
            buildah("rmi", f"localhost/{name}:{old.stem.rsplit('-', 1)[1]}")
        old.unlink()
    return Image(ref, archive)


def _cached(name: str, tag: str) -> Image:
    return Image(f"localhost/{name}:{tag}", images_dir() / f"{name}-{tag}.tar")


def pause() -> Image:
    """The sandbox image: a static ``pause`` binary in an otherwise empty image."""
    compiler = _run(["gcc", "--version"]).splitlines()[0]
    image = _cached("tessera-pause", digest(PAUSE_C, compiler))
    if image.archive.is_file():
        return image
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "pause.c", Path(tmp) / "pause"
        source.write_text(PAUSE_C)
        _run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(source)])
        container = buildah("from", "scratch").strip()
        try:
            buildah("copy", container, str(binary), "/pause")
            buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
            buildah("commit", "--quiet", container, image.ref)
        finally:
            buildah("rm", container)
    _log(f"built {image.ref} in {time.monotonic() - started:.1f}s")
    return _export(image.ref, image.archive)


def base() -> Image:
    """Debian ``minbase`` with python3 and venv, for the Dockerfile's ``BASE_IMAGE``."""
    image = _cached("tessera-base", digest(DEBIAN_SUITE, DEBIAN_MIRROR, *BASE_PACKAGES))
    if image.archive.is_file():
        return image
    started = time.monotonic()
    container = buildah("from", "scratch").strip()
    try:
        root = Path(buildah("mount", container).strip())
        include = ",".join(BASE_PACKAGES)
        _run(["debootstrap", "--variant=minbase", f"--include={include}", DEBIAN_SUITE, str(root), DEBIAN_MIRROR])
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
            for path in (root / junk).glob("*"):
                if path.is_file():
                    path.unlink()
        buildah("umount", container)
        search = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        buildah("config", "--env", "LANG=C.UTF-8", "--env", f"PATH={search}", "--cmd", "python3", container)
        buildah("commit", "--quiet", container, image.ref)
    finally:
        buildah("rm", container)
    _log(f"built {image.ref} (debootstrap {DEBIAN_SUITE}) in {time.monotonic() - started:.0f}s")
    return _export(image.ref, image.archive)


def wheelhouse(lock: Path) -> Path:
    """Every wheel ``lock`` pins, for Linux x86_64 CPython :data:`PYTHON_TAG`, checked by hash."""
    target = assets.cache_root() / "wheelhouse" / digest(lock.read_bytes(), PYTHON_TAG)
    if target.is_dir():
        return target
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    started = time.monotonic()
    # pip does not widen a given manylinux platform to older ones, so name each.
    platform = ["--implementation", "cp", "--python-version", PYTHON_TAG]
    for minor in range(GLIBC_MINOR, 4, -1):
        platform += ["--platform", f"manylinux_2_{minor}_x86_64"]
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
          "--require-hashes", *platform, "-r", str(lock), "-d", str(staging)])  # fmt: skip
    os.replace(staging, target)
    _log(f"downloaded the wheelhouse ({len(list(target.glob('*.whl')))} wheels) in {time.monotonic() - started:.0f}s")
    return target


def tessera(repo: Path) -> Image:
    """The repository's Dockerfile, built on :func:`base` with no network inside the build."""
    base_image = base()
    image = _cached("tessera", tree_digest(repo, CONTEXT, base_image.ref))
    if image.archive.is_file():
        return image
    wheels = wheelhouse(repo / LOCK_FILE)
    _load(base_image)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        pip_conf = Path(tmp) / "pip.conf"
        pip_conf.write_text("[global]\nno-index = true\nfind-links = /wheels\n")
        buildah("bud", "--quiet", "--pull=never", "--network=none", "--layers=false",
                "--build-arg", f"BASE_IMAGE={base_image.ref}",
                "--volume", f"{wheels}:/wheels:ro", "--volume", f"{pip_conf}:/etc/pip.conf:ro",
                "--tag", image.ref, "--file", str(repo / "Dockerfile"), str(repo))  # fmt: skip
    _log(f"built {image.ref} from the Dockerfile in {time.monotonic() - started:.0f}s")
    return _export(image.ref, image.archive)


APPS = ("tessera-e2e-apps", Path("tests") / "e2e" / "apps")  # the ledger app and a client, for examples/


def project(root: Path) -> tuple[Image, Image]:
    """The images a cluster needs to run the examples: the project's and the example apps'."""
    name, context = APPS
    return tessera(root), from_context(name, root / context)


def from_context(name: str, context: Path) -> Image:
    """An image from a folder with a ``Containerfile`` that starts ``FROM ${BASE_IMAGE}`` (like the
    project's Dockerfile), built on :func:`base` with no network."""
    base_image = base()
    image = _cached(name, tree_digest(context, tuple(sorted(p.name for p in context.iterdir())), base_image.ref))
    if image.archive.is_file():
        return image
    _load(base_image)
    started = time.monotonic()
    buildah("bud", "--quiet", "--pull=never", "--network=none", "--layers=false",
            "--build-arg", f"BASE_IMAGE={base_image.ref}", "--tag", image.ref,
            "--file", str(context / "Containerfile"), str(context))  # fmt: skip
    _log(f"built {image.ref} in {time.monotonic() - started:.1f}s")
    return _export(image.ref, image.archive)
