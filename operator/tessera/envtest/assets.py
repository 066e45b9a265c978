"""Control-plane binaries for tests: found, or built once from the Go module proxy and cached.

What controller-runtime's envtest downloads, Tessera builds, because these machines reach only
package registries. ``k8s.io/kubernetes`` cannot be ``go install``-ed (its staging modules are
``replace``-d to local folders), so a throwaway module requires it and replaces every staging
module with the published ``v0.X.Y``; the list of staging modules is read from the release's own
``go.mod``, not hard-coded. etcd is built the same way because Debian's 3.4 is too old for
Kubernetes 1.31+ (watch progress requests need 3.5.13+).

Order of precedence: ``KUBEBUILDER_ASSETS`` (a folder holding the binaries, as Kubernetes
developers already use), then the cache (``$TESSERA_CACHE`` or ``~/.cache/tessera``), then a build.
Versions are pinned here and nowhere else (helm joins them with the chart).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.5.35"

COREDNS_VERSION = "v1.13.2"  # its client-go matches KUBERNETES_VERSION's minor

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kubectl")
REQUIRED = ("kube-apiserver", "etcd", "kubectl")
# What a real node adds (tessera.envtest.node): built on demand, in the same throwaway module.
NODE_KUBE_COMMANDS = ("kubelet", "kube-scheduler", "kube-proxy")
NODE_COMMANDS = (*NODE_KUBE_COMMANDS, "coredns")
# CoreDNS with only what a test cluster's DNS needs; the order is CoreDNS's own plugin.cfg order.
COREDNS_PLUGINS = ("bind", "ready", "health", "errors", "log", "cache", "kubernetes")


class AssetError(RuntimeError):
    """A control-plane binary could not be found or built."""


@dataclasses.dataclass(frozen=True)
class Assets:
    """Paths of the control-plane binaries."""

    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def has_controller_manager(self) -> bool:
        return self.path("kube-controller-manager").is_file()


def cache_root() -> Path:
    env = os.environ.get("TESSERA_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tessera"


def control_plane_dir() -> Path:
    return cache_root() / "control-plane" / f"{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}"


def node_dir() -> Path:
    return cache_root() / "node" / f"{KUBERNETES_VERSION}-coredns-{COREDNS_VERSION}"


def _complete(directory: Path, names: tuple[str, ...]) -> bool:
    return all((directory / name).is_file() for name in names)


def find() -> Assets | None:
    """Return usable binaries without building, or None."""
    explicit = os.environ.get("KUBEBUILDER_ASSETS")
    if explicit:
        directory = Path(explicit)
        if not _complete(directory, REQUIRED):
            missing = [n for n in REQUIRED if not (directory / n).is_file()]
            raise AssetError(f"KUBEBUILDER_ASSETS={explicit} lacks {', '.join(missing)}")
        return Assets(directory)
    cached = control_plane_dir()
    if _complete(cached, (*REQUIRED, "kube-controller-manager")):
        return Assets(cached)
    return None


def ensure() -> Assets:
    """Return usable binaries, building them into the cache when absent."""
    found = find()
    if found is not None:
        return found
    return build()


def _go_env() -> dict[str, str]:
    if shutil.which("go") is None:
        raise AssetError("the 'go' toolchain is not on PATH; it is needed once to build the control plane")
    env = dict(os.environ)
    env.update({"CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"})
    return env


def _log(message: str) -> None:
    print(f"[control-plane] {message}", file=sys.stderr, flush=True)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssetError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def _build_with_progress(cmd: list[str], cwd: Path, env: dict[str, str], label: str) -> None:
    """Run ``go build -v`` and report every fiftieth package compiled, so a long build shows life."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    count = 0
    for line in proc.stdout:
        tail = [*tail, line.rstrip()][-40:]
        if re.match(r"^[\w.\-]+(/[\w.\-~]+)+$", line.strip()):
            count += 1
            if count % 50 == 0:
                _log(f"{label}: {count} packages compiled, {time.monotonic() - started:.0f}s")
    if proc.wait() != 0:
        raise AssetError(f"building {label} failed:\n" + "\n".join(tail))
    _log(f"{label}: built in {time.monotonic() - started:.0f}s ({count} packages)")


def staging_replacements(kubernetes_go_mod: str, version: str) -> list[str]:
    """``replace`` lines mapping each staging module of k8s.io/kubernetes to its published v0.X.Y."""
    minor_patch = version.removeprefix("v1.")
    modules = sorted(set(re.findall(r"^\s*(k8s\.io/[\w.\-/]+)\s+=>\s+\./staging/", kubernetes_go_mod, re.M)))
    if not modules:
        raise AssetError("no staging replace directives found in k8s.io/kubernetes go.mod")
    return [f"replace {m} => {m} v0.{minor_patch}" for m in modules]


def _godebug_block(kubernetes_go_mod: str) -> str:
    match = re.search(r"^godebug\s+(\(.*?\)|[^\n]+)", kubernetes_go_mod, re.M | re.S)
    return match.group(0) if match else ""


def _version_ldflags(version: str) -> str:
    major, minor = version.removeprefix("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def throwaway_module(name: str, go: str, requires: str, extra: tuple[str, ...] = ()) -> Path:
    """``<cache>/build/<name>/``, a Go module that requires ``requires`` (``path version``) and holds
    ``extra`` lines (replace, godebug): how a program whose own go.mod has ``replace`` directives
    (ignored in a dependency) is built from the module proxy."""
    work = cache_root() / "build" / name
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"module tessera.dev/{name.split('-v')[0]}-build", "", go, "", f"require {requires}", "", *extra, ""]
    (work / "go.mod").write_text("\n".join(lines))
    (work / "go.sum").touch()
    return work


def build_kubernetes(out: Path, commands: tuple[str, ...] = KUBE_COMMANDS) -> None:
    env = _go_env()
    _log(f"downloading k8s.io/kubernetes@{KUBERNETES_VERSION} through the Go module proxy")
    module = f"k8s.io/kubernetes@{KUBERNETES_VERSION}"
    outside = cache_root() / "build"
    outside.mkdir(parents=True, exist_ok=True)
    info = json.loads(_run(["go", "mod", "download", "-json", module], outside, env))
    upstream = Path(info["GoMod"]).read_text()
    go_line = re.search(r"^go\s+\S+", upstream, re.M)
    extra = (_godebug_block(upstream), *staging_replacements(upstream, KUBERNETES_VERSION))
    work = throwaway_module(
        f"kubernetes-{KUBERNETES_VERSION}", go_line.group(0) if go_line else "go 1.24", module.replace("@", " "), extra
    )
    cmd = ["go", "build", "-v", "-trimpath", "-ldflags", _version_ldflags(KUBERNETES_VERSION), "-o", str(out) + "/"]
    _build_with_progress(cmd + [f"k8s.io/kubernetes/cmd/{c}" for c in commands], work, env, "kubernetes")


def build_etcd(out: Path) -> None:
    env = _go_env()
    work = throwaway_module(f"etcd-{ETCD_VERSION}", "go 1.23", f"go.etcd.io/etcd/server/v3 {ETCD_VERSION}")
    cmd = ["go", "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3"]
    _build_with_progress(cmd, work, env, "etcd")


def build() -> Assets:
    """Build kube-apiserver, kube-controller-manager, kubectl and etcd into the cache."""
    out = control_plane_dir()
    staging = out.with_name(out.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    _log(f"building Kubernetes {KUBERNETES_VERSION} and etcd {ETCD_VERSION} into {out} (cold: about 9 min on 2 cores)")
    started = time.monotonic()
    if not (staging / "etcd").is_file():
        build_etcd(staging)
    if not _complete(staging, KUBE_COMMANDS):
        build_kubernetes(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    _log(f"control plane ready in {time.monotonic() - started:.0f}s: {out}")
    return Assets(out)


def coredns_main(plugins: tuple[str, ...] = COREDNS_PLUGINS) -> str:
    """CoreDNS's documented way to build with a chosen plugin set: a ``main`` that imports the plugins
    and sets the directive order (instead of editing plugin.cfg and running ``go generate``)."""
    imports = "\n".join(f'\t_ "github.com/coredns/coredns/plugin/{p}"' for p in plugins)
    directives = ", ".join(f'"{p}"' for p in plugins)
    return f"""package main

import (
\t"github.com/coredns/coredns/core/dnsserver"
\t"github.com/coredns/coredns/coremain"
{imports}
)

func init() {{ dnsserver.Directives = []string{{{directives}}} }}

func main() {{ coremain.Run() }}
"""


def build_coredns(out: Path) -> None:
    env = _go_env()
    work = throwaway_module(f"coredns-{COREDNS_VERSION}", "go 1.24.0", f"github.com/coredns/coredns {COREDNS_VERSION}")
    (work / "main.go").write_text(coredns_main())
    _run(["go", "mod", "tidy"], work, env)
    cmd = ["go", "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "coredns"), "."]
    _build_with_progress(cmd, work, env, "coredns")


def find_node() -> Path | None:
    """The folder of kubelet, kube-scheduler, kube-proxy and coredns if all are there (or given by
    ``TESSERA_NODE_ASSETS``), else None."""
    explicit = os.environ.get("TESSERA_NODE_ASSETS")
    directory = Path(explicit) if explicit else node_dir()
    if _complete(directory, NODE_COMMANDS):
        return directory
    if explicit:
        raise AssetError(f"TESSERA_NODE_ASSETS={explicit} lacks one of {', '.join(NODE_COMMANDS)}")
    return None


def ensure_node() -> Path:
    """The node binaries, built into the cache when absent (a minute or two once the control plane's
    Go caches are warm)."""
    found = find_node()
    if found is not None:
        return found
    out = node_dir()
    staging = out.with_name(out.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    _log(f"building {', '.join(NODE_COMMANDS)} into {out}")
    started = time.monotonic()
    if not _complete(staging, NODE_KUBE_COMMANDS):
        build_kubernetes(staging, NODE_KUBE_COMMANDS)
    if not (staging / "coredns").is_file():
        build_coredns(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    _log(f"node binaries ready in {time.monotonic() - started:.0f}s: {out}")
    return out


def explicit_or_cached(variable: str, target: Path, build: Callable[[Path], Path]) -> Path:
    """A tool's binary: the file ``$variable`` names, else the cached ``target``, else ``build(target)``."""
    explicit = os.environ.get(variable)
    if explicit:
        if not Path(explicit).is_file():
            raise AssetError(f"{variable}={explicit} is not a file")
        return Path(explicit)
    return target if target.is_file() else build(target)


def print_path(ensure: Callable[[], Path]) -> int:
    """``python -m tessera.envtest.<tool>``: print the binary's path, or why there is none."""
    try:
        print(ensure())
    except AssetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
