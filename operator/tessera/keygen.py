"""``tessera keygen``: make a key pair on the workload's side and register only its public half.

The private key is written to a new file (mode 0600, never overwritten); stdout gets a
ServiceAccountKey manifest carrying just the public key, ready for ``kubectl apply -f -``; stderr
says what the workload's JWTs must carry (kid, iss, sub). The private key never reaches stdout,
so piping the output into kubectl cannot leak it into the cluster.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from pathlib import Path
from typing import Any, TextIO

import pydantic
import yaml

from tessera.api import meta
from tessera.api import serviceaccountkey as sak_api
from tessera.crypto import keys

DNS1123_LABEL = re.compile(meta.DNS1123_LABEL)
MAX_NAME = 253
_KID_CHARS = 8


class UsageError(Exception):
    """The command cannot run as asked; its message is for the user (exit status 2)."""


@dataclasses.dataclass(frozen=True)
class Options:
    service_account: str
    namespace: str
    name: str | None
    algorithm: keys.Algorithm
    expires_in_days: int | None
    private_key_out: Path


def default_name(service_account: str, kid: str) -> str:
    """``<account>-<first 8 characters of the kid>``, lowercased, keeping only [a-z0-9-]."""
    suffix = re.sub(r"[^a-z0-9-]", "", kid[:_KID_CHARS].lower())
    return f"{service_account[: MAX_NAME - _KID_CHARS - 1]}-{suffix}".rstrip("-")


def manifest(options: Options, name: str, public: keys.PublicKey, now: datetime.datetime) -> sak_api.ServiceAccountKey:
    """The ServiceAccountKey for ``public``; ValidationError when a name is not a valid Kubernetes name."""
    expires_at = None
    if options.expires_in_days is not None:
        expires_at = now.replace(microsecond=0) + datetime.timedelta(days=options.expires_in_days)
    spec = sak_api.ServiceAccountKeySpec(
        service_account_name=options.service_account,
        description=f"Made by tessera keygen on {now.date().isoformat()}; the private key stays with the workload.",
        public_key=sak_api.PublicKeySpec(pem=keys.public_pem(public)),
        expires_at=expires_at,
    )
    return sak_api.ServiceAccountKey(metadata=meta.Metadata(name=name, namespace=options.namespace), spec=spec)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the PEM) as literal blocks, so the manifest reads like the PEM file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def document(sak: sak_api.ServiceAccountKey) -> dict[str, Any]:
    """The manifest as kubectl reads it."""
    return {
        "apiVersion": meta.API_VERSION,
        "kind": sak_api.INFO.kind,
        "metadata": {"name": sak.name, "namespace": sak.namespace},
        "spec": sak.spec.wire(),
    }


def _check_names(options: Options, name: str) -> None:
    if not DNS1123_LABEL.match(options.namespace) or len(options.namespace) > 63:
        raise UsageError(f"--namespace {options.namespace!r} is not a valid namespace name")
    for flag, value in (("--service-account", options.service_account), ("--name", name)):
        if not re.match(meta.DNS1123_SUBDOMAIN, value) or len(value) > MAX_NAME:
            raise UsageError(f"{flag} {value!r} is not a valid Kubernetes object name (lowercase a-z, 0-9, '-', '.')")


def write_private_key(path: Path, pem: str) -> None:
    """Create ``path`` with mode 0600 and write ``pem``; never replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(
            f"{path} exists already; refusing to overwrite a key (choose another --private-key-out)"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)  # exactly 0600, whatever the umask
        handle.write(pem)


def run(options: Options, now: datetime.datetime, out: TextIO, err: TextIO) -> int:
    """Generate, write the private key, print the manifest; 2 on a usage error."""
    try:
        private = keys.generate(options.algorithm)
        public = keys.public_of(private)
        kid = keys.thumbprint(public)
        name = options.name or default_name(options.service_account, kid)
        _check_names(options, name)
        sak = manifest(options, name, public, now)
        write_private_key(options.private_key_out, keys.private_pem(private))
    except (UsageError, pydantic.ValidationError) as exc:
        print(f"tessera keygen: {exc}", file=err)
        return 2
    out.write(yaml.dump(document(sak), Dumper=_Dumper, sort_keys=False, width=120))
    print(f"Private key ({options.algorithm}) written to {options.private_key_out} (mode 0600).", file=err)
    print(f"Key id: {kid}", file=err)
    print(f"Subject: {sak.subject}", file=err)
    print(
        f"The workload's JWTs must carry header kid={kid} and alg={options.algorithm}, and claims iss and sub "
        f"both {sak.subject}. Apply the manifest above with `kubectl apply -f -`.",
        file=err,
    )
    return 0
