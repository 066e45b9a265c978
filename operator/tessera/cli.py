"""``tessera``: one command, several roles. Each role imports only what it needs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tessera.sidecar import defaults


def _crds(args: argparse.Namespace) -> int:
    from tessera.api import kinds

    for path in kinds.write(Path(args.out)):
        print(path)
    return 0


def _operator(args: argparse.Namespace) -> int:
    from tessera.operator import runner

    return runner.run(args)


def _keygen(args: argparse.Namespace) -> int:
    import datetime

    from tessera import keygen

    options = keygen.Options(
        service_account=args.service_account,
        namespace=args.namespace,
        name=args.name,
        algorithm=args.algorithm,
        expires_in_days=args.expires_in_days,
        private_key_out=Path(args.private_key_out),
    )
    return keygen.run(options, datetime.datetime.now(datetime.UTC), sys.stdout, sys.stderr)


def _sidecar(args: argparse.Namespace) -> int:
    from tessera import errors
    from tessera.sidecar import egress, server

    try:
        audiences = frozenset(a.strip() for a in args.audience.split(",") if a.strip())
        if not audiences and not args.egress_only:
            raise errors.ConfigError("--audience: give at least one accepted audience")
        if (args.proxy_listen is None) != (args.upstream is None):
            raise errors.ConfigError("--proxy-listen and --upstream go together")
        routes = tuple(egress.parse_route(r, server.parse_listen) for r in args.egress)
        if args.egress_only and not routes:
            raise errors.ConfigError("--egress-only needs at least one --egress route")
        kube_token = Path(args.kubernetes_token_file) if args.kubernetes_token_file else None
        if routes and args.token_file is None and (args.issuer_url is None or kube_token is None):
            raise errors.ConfigError(
                "--egress needs a token: --token-file (the mounted token Secret), or --issuer-url with "
                "--kubernetes-token-file (exchanged at the issuer)"
            )
        if args.issuer_url is not None and not args.issuer_url.startswith("https://"):
            raise errors.ConfigError("--issuer-url must be an https:// URL")
        config = server.Config(
            bundle_dir=Path(args.bundle_dir),
            namespace=args.namespace,
            audiences=audiences,
            rules_file=Path(args.rules),
            listen=server.parse_listen(args.listen),
            proxy_listen=server.parse_listen(args.proxy_listen) if args.proxy_listen else None,
            upstream=args.upstream,
            leeway=args.leeway,
            max_token_bytes=args.max_token_bytes,
            max_lifetime=args.max_lifetime,
            reload_seconds=args.reload_seconds,
            verification=not args.egress_only,
            issuer_url=args.issuer_url,
            issuer_ca=Path(args.issuer_ca) if args.issuer_ca else None,
            kubernetes_token_file=kube_token,
            channel=not args.no_channel,
            channel_wait=args.channel_wait,
            egress=routes,
            token_file=Path(args.token_file) if args.token_file else None,
            egress_audiences=tuple(args.egress_audience),
        )
    except errors.ConfigError as exc:
        print(f"tessera sidecar: {exc}", file=sys.stderr)
        return 2
    return server.run(config)


def _issuer(args: argparse.Namespace) -> int:
    from tessera.issuer import server
    from tessera.sidecar import server as sidecar_server

    if (args.tls_cert is None) != (args.tls_key is None):
        print("tessera issuer: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    config = server.Config(
        listen=sidecar_server.parse_listen(args.listen),
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
    )
    return server.run(config)


def _add_issuer(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    import os

    iss = sub.add_parser(
        "issuer",
        help="serve OIDC discovery, the JWKS and the token endpoint over HTTPS",
        description="The issuer service: every replica serves alone, reading keys, accounts, providers and "
        "revocations from the API server. Settings: the operator's TESSERA_* variables (TESSERA_ISSUER, "
        "TESSERA_NAMESPACE, TESSERA_KUBERNETES_AUDIENCE, ...).",
    )
    iss.add_argument("--listen", default=os.environ.get("TESSERA_ISSUER_LISTEN", "0.0.0.0:8443"), help="address")
    iss.add_argument("--tls-cert", default=os.environ.get("TESSERA_ISSUER_TLS_CERT"), help="PEM certificate chain")
    iss.add_argument("--tls-key", default=os.environ.get("TESSERA_ISSUER_TLS_KEY"), help="PEM private key")
    iss.set_defaults(func=_issuer)


def _token(args: argparse.Namespace) -> int:
    from tessera import errors
    from tessera.client import token

    remote = token.Remote(args.issuer, Path(args.ca_file) if args.ca_file else None) if args.issuer else None
    try:
        if args.action == "decode":
            return token.decode(
                token.read_token(args.token), remote, args.bundle and Path(args.bundle), args.audience, sys.stdout
            )
        if remote is None:
            raise errors.ConfigError("--issuer is needed to get a token")
        if args.action == "exchange":
            return token.exchange_token(
                remote, token.read_token(args.subject_token_file), args.audience_list, sys.stdout, sys.stderr
            )
        return token.assert_and_exchange(
            remote, Path(args.private_key), args.key_id, args.subject, args.audience_list, sys.stdout, sys.stderr
        )
    except (errors.TesseraError, OSError, ValueError) as exc:
        print(f"tessera token: {exc}", file=sys.stderr)
        return 2


def _add_token(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tok = sub.add_parser("token", help="get a Tessera token from the issuer, or decode and check one")
    actions = tok.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--issuer", help="the issuer URL (https), e.g. https://tessera.example.com")
    common.add_argument("--ca-file", help="PEM CA bundle to trust for the issuer (default: the system's)")
    ex = actions.add_parser("exchange", parents=[common], help="exchange a provider's or Kubernetes token (RFC 8693)")
    ex.add_argument("subject_token_file", nargs="?", help="file holding the token; '-' or nothing: stdin")
    ex.add_argument("--audience", dest="audience_list", action="append", default=[], help="aud to ask for (repeatable)")
    sa = actions.add_parser("assert", parents=[common], help="sign a JWT-bearer assertion with a ServiceAccountKey")
    sa.add_argument("--private-key", required=True, help="the key's PKCS#8 PEM private key")
    sa.add_argument("--key-id", required=True, help="its kid (the ServiceAccountKey's status.keyId)")
    sa.add_argument("--subject", required=True, help="the account's subject, urn:tessera:serviceaccount:<ns>:<name>")
    sa.add_argument("--audience", dest="audience_list", action="append", default=[], help="aud to ask for (repeatable)")
    de = actions.add_parser("decode", parents=[common], help="print a token's claims and what is wrong with it")
    de.add_argument("token", nargs="?", help="file holding the token; '-' or nothing: stdin")
    de.add_argument("--bundle", help="verify against this trust bundle file (bundle.json) instead of --issuer")
    de.add_argument("--audience", help="the audience it must carry")
    tok.set_defaults(func=_token)


def _can_i(args: argparse.Namespace) -> int:
    from tessera.client import access

    return access.run(args.principal, args.permission, args.namespace)


def _add_can_i(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ci = sub.add_parser(
        "can-i",
        help="would the sidecar allow a principal a permission in a namespace, and which RoleBindings grant it",
        description="Principals as in trust bundles: urn:tessera:serviceaccount:<ns>:<name>, or "
        "user:<issuer>#<subject>. Exit 0 for yes, 1 for no.",
    )
    ci.add_argument("principal")
    ci.add_argument("permission", help="namespace.resource.verb")
    ci.add_argument("-n", "--namespace", required=True)
    ci.set_defaults(func=_can_i)


def _env(name: str, default: str | None = None) -> str | None:
    import os

    return os.environ.get(f"TESSERA_SIDECAR_{name}", default)


def _add_sidecar(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sc = sub.add_parser(
        "sidecar",
        help="verify callers' tokens for the app in this pod; attach its own token to its calls (egress)",
        description="Verify bearer tokens against the trust bundle (the mounted file, kept current by the live "
        "channel from the issuer) and authorise requests by rules; and/or pass the app's calls to configured "
        "upstreams with the Pod's Tessera token (--egress). Every flag also reads TESSERA_SIDECAR_<FLAG> "
        "(upper case, - as _; repeatable flags: comma-separated).",
    )
    required = _env("NAMESPACE") is None
    sc.add_argument("--bundle-dir", default=_env("BUNDLE_DIR", defaults.BUNDLE_DIR), help="mounted trust bundle")
    sc.add_argument("--namespace", default=_env("NAMESPACE"), required=required, help="this pod's namespace")
    sc.add_argument(
        "--audience", default=_env("AUDIENCE", defaults.AUDIENCE), help="accepted audiences, comma-separated"
    )
    sc.add_argument("--rules", default=_env("RULES", defaults.RULES_FILE), help="rules file (YAML or JSON)")
    sc.add_argument(
        "--listen",
        default=_env("LISTEN", f"{defaults.LISTEN_HOST}:{defaults.LISTEN_PORT}"),
        help="auth endpoint, probes, metrics",
    )
    sc.add_argument("--proxy-listen", default=_env("PROXY_LISTEN"), help="reverse proxy address (with --upstream)")
    sc.add_argument("--upstream", default=_env("UPSTREAM"), help="the app, e.g. http://127.0.0.1:8080")
    sc.add_argument(
        "--leeway", type=int, default=_env("LEEWAY", str(defaults.LEEWAY_SECONDS)), help="clock leeway, seconds"
    )
    sc.add_argument(
        "--max-token-bytes", type=_positive_int, default=_env("MAX_TOKEN_BYTES", str(defaults.MAX_TOKEN_BYTES))
    )
    sc.add_argument(
        "--max-lifetime",
        type=_positive_int,
        default=_env("MAX_LIFETIME", str(defaults.MAX_LIFETIME_SECONDS)),
        help="exp - iat",
    )
    sc.add_argument("--reload-seconds", type=float, default=_env("RELOAD_SECONDS", str(defaults.RELOAD_SECONDS)))
    sc.add_argument(
        "--issuer-url", default=_env("ISSUER_URL"), help="the issuer service, e.g. https://tessera.tessera-system.svc"
    )
    sc.add_argument(
        "--issuer-ca", default=_env("ISSUER_CA"), help="its CA (PEM); default: issuer-ca.crt beside the mounted bundle"
    )
    sc.add_argument(
        "--kubernetes-token-file",
        default=_env("KUBERNETES_TOKEN_FILE"),
        help="the Pod's projected Kubernetes token (audience: the issuer's): the channel's and exchange's credential",
    )
    sc.add_argument(
        "--no-channel",
        action="store_true",
        default=_env("NO_CHANNEL", "") not in ("", "0", "false"),
        help="only the mounted bundle, no live channel from the issuer",
    )
    sc.add_argument(
        "--channel-wait",
        type=_positive_int,
        default=_env("CHANNEL_WAIT", str(defaults.CHANNEL_WAIT_SECONDS)),
        help="long poll, seconds",
    )
    sc.add_argument(
        "--egress",
        action="append",
        default=_env_list("EGRESS"),
        metavar="LISTEN=URL",
        help="a local port passing calls to one upstream with the Pod's token, e.g. 127.0.0.1:9001=http://ledger.shop.svc",
    )
    sc.add_argument("--token-file", default=_env("TOKEN_FILE"), help="egress: the mounted token Secret's file")
    sc.add_argument(
        "--egress-audience", action="append", default=_env_list("EGRESS_AUDIENCE"), help="egress: aud to exchange for"
    )
    sc.add_argument(
        "--egress-only",
        action="store_true",
        default=_env("EGRESS_ONLY", "") not in ("", "0", "false"),
        help="no verification (no bundle, rules or /auth): only --egress routes, probes and metrics",
    )
    sc.set_defaults(func=_sidecar)


def _env_list(name: str) -> list[str]:
    return [v.strip() for v in (_env(name, "") or "").split(",") if v.strip()]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_keygen(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kg = sub.add_parser(
        "keygen",
        help="make a key pair locally; print a ServiceAccountKey with only its public key",
        description="Generate a key pair, write the private key to a new file (mode 0600) and print a "
        "ServiceAccountKey manifest holding only the public key, for `kubectl apply -f -`.",
    )
    kg.add_argument("--service-account", required=True, help="the Tessera ServiceAccount the key belongs to")
    kg.add_argument("--namespace", default="default", help="its namespace (default: default)")
    kg.add_argument("--name", help="the ServiceAccountKey's name (default: <service-account>-<start of the key id>)")
    kg.add_argument("--algorithm", choices=("ES256", "EdDSA", "RS256"), default="ES256", help="default: ES256")
    kg.add_argument("--expires-in-days", type=_positive_int, help="the key stops being trusted after this many days")
    kg.add_argument("--private-key-out", required=True, help="new file for the private key (PKCS#8 PEM)")
    kg.set_defaults(func=_keygen)


def _peering_priority() -> str | None:
    """TESSERA_PEERING_PRIORITY (argparse converts it like the flag), or None: the runner then picks one."""
    import os

    return os.environ.get("TESSERA_PEERING_PRIORITY") or None


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="tessera", description="Identity and access management for workloads on Kubernetes."
    )
    sub = top.add_subparsers(dest="command", required=True)
    op = sub.add_parser("operator", help="run the operator against the current cluster")
    op.add_argument("--namespace", help="the operator's own namespace (issuer keys live there); env TESSERA_NAMESPACE")
    op.add_argument("--watch-namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    op.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="Kopf liveness endpoint ('' disables)")
    op.add_argument("--metrics", default="0.0.0.0:9090", help="host:port serving Prometheus /metrics ('' disables)")
    op.add_argument("--peering", default=None, help="Kopf peering object name for HA; default: standalone")
    op.add_argument(
        "--priority",
        type=int,
        default=_peering_priority(),
        help="Kopf peering priority: the live replica with the highest acts, equal ones all pause; "
        "env TESSERA_PEERING_PRIORITY; default with --peering: the earlier a replica started, the higher",
    )
    op.add_argument("--verbose", action="store_true", help="log each handler step")
    op.set_defaults(func=_operator)
    crds = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the models")
    crds.add_argument("--out", default="crds", help="folder to write into (default: crds)")
    crds.set_defaults(func=_crds)
    _add_keygen(sub)
    _add_sidecar(sub)
    _add_issuer(sub)
    _add_token(sub)
    _add_can_i(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
