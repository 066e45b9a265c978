"""The Helm chart on a real API server: lint and its schema, a server-side dry run of what it renders,
then install, the operator run with exactly the chart's identity (a token of the chart's Kubernetes
ServiceAccount) and the chart's arguments through the examples, forbidden actions refused, upgrades
to two replicas (peering, PDB) and to watched namespaces, and an uninstall that leaves only what the
README says stays.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import kubernetes
import pytest
from cryptography import x509

from tessera import protocol
from tessera.core import exchange, settings
from tessera.crypto import keys
from tessera.kube import client as kube_client
from tessera.kube import issuing
from tests import issuer_kit, waiting
from tests.chart_kit import CHART, HOME, RELEASE, Helm, deployment_in, operator_identity, run_as_chart
from tests.harness import (
    EXAMPLES,
    Cluster,
    Operator,
    free_port,
    stop_operator,
    stop_process,
)
from tests.resources import SA, SAK, apply, bundle, condition, reason_is, token_in, warnings

ISSUER = "https://tessera.example.com"
EXAMPLE_FILES = ("00-namespace.yaml", "10-serviceaccount.yaml", "20-serviceaccountkey.yaml", "30-two-tenants.yaml")
TENANTS = ("shop", "tenant-a", "tenant-b")  # the namespaces the examples make
BILLING = "urn:tessera:serviceaccount:shop:billing"
# Set on every install: the test's refresh and leeway (start_operator's), and a non-default issuer
# that must reach the tokens.
FAST = ("--set", f"issuer={ISSUER}", "--set", "refreshCheckSeconds=2", "--set", "clockLeewaySeconds=5")
# What outlives `helm uninstall` on purpose (README, "Install with Helm"): (group, kind, namespace, name).
KEPT = {
    ("apiextensions.k8s.io", "CustomResourceDefinition", "", "clusterkopfpeerings.kopf.dev"),
    ("apiextensions.k8s.io", "CustomResourceDefinition", "", "kopfpeerings.kopf.dev"),
    ("apiregistration.k8s.io", "APIService", "", "v1.kopf.dev"),  # the API server's own, for a CRD group
    ("", "Namespace", "", HOME),
    ("", "Secret", HOME, settings.ISSUER_KEYS_SECRET),
    ("", "ConfigMap", HOME, settings.ISSUER_JWKS_CONFIGMAP),
    ("", "ConfigMap", HOME, settings.REVOCATIONS_CONFIGMAP),
}

ObjectId = tuple[str, str, str, str]


@pytest.fixture
def helm_client(tmp_path: Path) -> Helm:
    return Helm(tmp_path / "helm")


BAD_VALUES = [
    ("signingAlgorithm=HS256", "at '/signingAlgorithm': value must be one of 'ES256', 'EdDSA', 'RS256'"),
    ("issuer=http://tessera.example.com", "at '/issuer': 'http://tessera.example.com' does not match pattern"),
    ("replicas=0", "at '/replicas': minimum: got 0, want 1"),
    ("maxTokenTTLSeconds=100000", "at '/maxTokenTTLSeconds': maximum: got 100,000, want 86,400"),
    ("keyRotationHours=-1", "at '/keyRotationHours': minimum: got -1, want 0"),
    ("bundleMaxBytes=0", "at '/bundleMaxBytes': minimum: got 0, want 1"),
    ("image.tag=latest", "at '/image/tag': 'not' failed"),
    ("watchNamespaces={Shop}", "at '/watchNamespaces/0': 'Shop' does not match pattern"),
    ("signingAlgoritm=ES256", "additional properties 'signingAlgoritm' not allowed"),
    ("issuerService.replicas=0", "at '/issuerService/replicas': minimum: got 0, want 1"),
    ("issuerService.service.type=Ingress", "at '/issuerService/service/type': value must be one of"),
    ("issuerService.tls.secretName=Bad_Name", "at '/issuerService/tls/secretName': 'Bad_Name' does not match pattern"),
]


def test_lint_passes(helm_client: Helm) -> None:
    result = helm_client("lint", str(CHART), "--strict")
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(("value", "message"), BAD_VALUES, ids=[v for v, _ in BAD_VALUES])
def test_bad_values_fail_with_the_schema_message(helm_client: Helm, value: str, message: str) -> None:
    linted = helm_client("lint", str(CHART), "--set", value, check=False)
    assert linted.returncode != 0 and message in linted.stdout, linted.stdout
    rendered = helm_client("template", RELEASE, str(CHART), "--set", value, check=False)  # what install runs
    assert rendered.returncode != 0 and message in rendered.stderr, rendered.stderr


def test_rendered_chart_passes_a_server_side_dry_run(private_cluster: Cluster, tmp_path: Path) -> None:
    cluster = private_cluster
    run_helm = Helm(tmp_path / "helm", cluster)
    cluster.kubectl("apply", "-f", str(CHART / "crds"))  # what `helm install` does first
    for namespace in (HOME, *TENANTS):
        cluster.kubectl("create", "namespace", namespace)
    variants = [
        (),
        ("--set", "replicas=2"),
        ("--set", "replicas=2", "--set", "watchNamespaces={shop,tenant-a}"),
        ("--set", "issuerService.enabled=false"),
    ]
    for extra in variants:
        rendered = run_helm("template", RELEASE, str(CHART), "-n", HOME, *extra).stdout
        applied = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=rendered)
        assert "deployment.apps/tessera created (server dry run)" in applied.stdout, applied.stdout


# --- install, run, upgrade, uninstall ---------------------------------------------------------------


def assert_clean_log(operator: Operator) -> None:
    text = operator.logs()
    found = [line for line in text.splitlines() if re.search(r"forbidden|not enough permissions", line, re.I)]
    assert not found, "\n".join(found[:20])


def forbidden(identity: Cluster, *args: str) -> bool:
    result = identity.kubectl(*args, check=False)
    return result.returncode != 0 and "forbidden" in result.stderr.lower()


def allowed(identity: Cluster, *args: str) -> bool:
    return identity.kubectl(*args, check=False).returncode == 0


def ready(cluster: Cluster, namespace: str, plural: str, name: str) -> bool:
    return condition(cluster, namespace, plural, name).get("status") == "True"


def snapshot(cluster: Cluster) -> set[ObjectId]:
    """Every object the API server lists (events aside): (group, kind, namespace, name)."""
    kinds = cluster.kubectl("api-resources", "--verbs=list", "-o", "name").stdout.split()
    kinds = [k for k in kinds if k not in {"events", "events.events.k8s.io"}]
    listed = json.loads(cluster.kubectl("get", ",".join(kinds), "-A", "-o", "json").stdout)
    return {object_id(item) for item in listed["items"]}


def object_id(obj: dict[str, Any]) -> ObjectId:
    group = obj["apiVersion"].rpartition("/")[0]
    return group, obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def rules_of(manifest: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for d in manifest if d["kind"] in {"ClusterRole", "Role"} for rule in d["rules"]]


@pytest.fixture
def operators() -> Iterator[list[Operator]]:
    started: list[Operator] = []
    yield started
    for running in started:
        if running.process.poll() is None:
            stop_operator(running)


def peers_in(cluster: Cluster, *where: str) -> dict[str, Any] | None:
    """The replicas recorded in the release's peering object (``where``: kind and maybe -n namespace)."""
    found: dict[str, Any] | None = json.loads(cluster.kubectl("get", *where, RELEASE, "-o", "json").stdout).get(
        "status"
    )
    return found


def the_examples_work(cluster: Cluster) -> None:
    """examples/00, 10, 20, 30 applied as the README says; what the operator makes of them."""
    cluster.kubectl("apply", *(arg for name in EXAMPLE_FILES for arg in ("-f", str(EXAMPLES / name))))
    waiting.until(lambda: ready(cluster, "shop", SA, "billing"), what="billing Ready")
    token = waiting.until(lambda: token_in(cluster, "shop", "billing-tessera-token"), what="billing's token")
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == ISSUER  # the chart's value arrived
    for key in ("billing-generated", "billing-laptop"):
        waiting.until(functools.partial(ready, cluster, "shop", SAK, key), what=f"key {key} Ready")
    assert cluster.secret("shop", "billing-generated-tessera-key") is not None
    for namespace, name in (("tenant-a", "billing-reads-invoices"), ("tenant-b", "billing-runs-ledger")):
        bound = functools.partial(reason_is, cluster, namespace, "rolebindings", name, "Bound")
        waiting.until(bound, what=f"{name} Bound")
    for namespace in TENANTS:
        waiting.until(functools.partial(bundle, cluster, namespace), what=f"the trust bundle in {namespace}")
    waiting.until(lambda: BILLING in ((bundle(cluster, "tenant-a") or {}).get("grants") or {}), what="grants")
    # The keys reach the bundle a publishing round after they are Ready: wait, do not assume.
    waiting.until(
        lambda: len((bundle(cluster, "shop") or {}).get("serviceAccountKeys", {}).get("keys", [])) == 2,
        what="both keys in shop's trust bundle",
    )
    # Bad input gets a Warning event; a namespace that opts out loses its bundle.
    apply(cluster, "shop", SAK, "orphan", {"serviceAccountName": "nobody", "generate": {"algorithm": "ES256"}})
    waiting.until(lambda: warnings(cluster, "shop", "ServiceAccountNotFound", "orphan"), what="a Warning event")
    cluster.kubectl("label", "namespace", "tenant-b", f"{settings.TRUST_BUNDLE_LABEL}-")
    waiting.until(lambda: bundle(cluster, "tenant-b") is None, what="the bundle removed from tenant-b")


def cluster_wide_refusals(identity: Cluster) -> None:
    """What the operator's identity must not do, even when it serves every namespace."""
    assert forbidden(identity, "delete", "namespace", "shop", "--dry-run=server")
    assert forbidden(identity, "create", "clusterrole", "x", "--verb=get", "--resource=pods", "--dry-run=server")
    assert forbidden(identity, "get", "configmaps", "-n", "kube-system")  # ConfigMaps by name only
    by_name = "--field-selector=metadata.name="
    assert allowed(identity, "get", "configmaps", "-A", f"{by_name}{settings.TRUST_BUNDLE_CONFIGMAP}")  # watched
    assert forbidden(identity, "get", "configmaps", "-A", f"{by_name}kube-root-ca.crt")
    assert forbidden(identity, "patch", "tsakey", "billing-laptop", "-n", "shop", "--type=merge", "-p", "{}")
    assert forbidden(identity, "delete", "secret", "billing-tessera-token", "-n", "shop", "--dry-run=server")
    assert forbidden(identity, "create", "-f", str(EXAMPLES / "10-serviceaccount.yaml"), "--dry-run=server")
    assert forbidden(identity, "get", "pods", "-A")


def upgrade_to_two_replicas(cluster: Cluster, run_helm: Helm, identity: Cluster, log: Path) -> Operator:
    """Two replicas (peering, PDB) and another rotation period; the operator as upgraded serves."""
    run_helm("upgrade", RELEASE, str(CHART), "-n", HOME, *FAST, "--set", "replicas=2", "--set", "keyRotationHours=24")
    deployment = json.loads(cluster.kubectl("get", "deployment", RELEASE, "-n", HOME, "-o", "json").stdout)
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "TESSERA_KEY_ROTATION_HOURS", "value": "24"} in container["env"]
    assert f"--peering={RELEASE}" in container["args"]
    cluster.kubectl("get", "poddisruptionbudget", RELEASE, "-n", HOME)
    running = run_as_chart(cluster, identity, run_helm.manifest(), log)
    peers = waiting.until(lambda: peers_in(cluster, "clusterkopfpeering"), what="the replica in the peering object")
    assert peers[log.stem]["priority"] > 0  # random, so two replicas never tie (Kopf pauses equal ones)
    apply(cluster, "shop", SA, "after-upgrade", {})
    waiting.until(lambda: ready(cluster, "shop", SA, "after-upgrade"), what="served after the upgrade")
    apply(cluster, "shop", SA, "after-upgrade", {"disabled": True})
    waiting.until(lambda: token_in(cluster, "shop", "after-upgrade-tessera-token") is None, what="token withdrawn")
    return running


def upgrade_to_watched_namespaces(cluster: Cluster, run_helm: Helm, identity: Cluster, log: Path) -> Operator:
    """Only the examples' namespaces (and the release's): Secrets there only; the operator serves them."""
    watched = ("--set", "replicas=2", "--set", "watchNamespaces={shop,tenant-a,tenant-b}")
    run_helm("upgrade", RELEASE, str(CHART), "-n", HOME, *FAST, *watched)
    manifest = run_helm.manifest()
    assert {d["metadata"].get("namespace") for d in manifest if d["kind"] == "KopfPeering"} == {HOME, *TENANTS}
    assert "NotFound" in cluster.kubectl("get", "clusterkopfpeering", RELEASE, check=False).stderr
    assert forbidden(identity, "get", "secrets", "-n", "kube-system")
    assert forbidden(identity, "get", "secrets", "-n", "default")
    assert allowed(identity, "get", "secrets", "-n", "shop")
    # A rotation period of one second makes the key rotation due at once: it replaces the key Secret.
    running = run_as_chart(cluster, identity, manifest, log, TESSERA_KEY_ROTATION_HOURS=str(1 / 3600))
    waiting.until(lambda: "Rotated the issuer keys" in running.logs(), what="a key rotation")
    waiting.until(lambda: peers_in(cluster, "kopfpeering", "-n", "shop"), what="the replica in shop's peering object")
    apply(cluster, "tenant-a", SA, "restricted", {})
    waiting.until(lambda: ready(cluster, "tenant-a", SA, "restricted"), what="served in a watched namespace")
    return running


def delete_tessera_resources(cluster: Cluster) -> None:
    """As the README says, before uninstalling: while the operator runs (the account finalizer)."""
    kinds = ",".join(f"{k}.iam.tessera.dev" for k in ("rolebindings", "roles", "serviceaccountkeys", "serviceaccounts"))
    cluster.kubectl("delete", kinds, "--all", "-A", "--wait=false")
    waiting.until(
        lambda: not cluster.kubectl("get", "serviceaccounts.iam.tessera.dev", "-A", "-o", "name").stdout.strip(),
        what="the accounts gone (their finalizer removed by the operator)",
    )


def test_install_run_upgrade_uninstall(private_cluster: Cluster, tmp_path: Path, operators: list[Operator]) -> None:
    cluster, run_helm = private_cluster, Helm(tmp_path / "helm", private_cluster)
    before = snapshot(cluster)
    run_helm("install", RELEASE, str(CHART), "-n", HOME, "--create-namespace", *FAST)
    installed = run_helm.manifest()
    assert not [r for r in rules_of(installed) if "*" in str(r)], "a wildcard in the chart's RBAC"
    made = {object_id(d) for d in installed}
    identity = operator_identity(cluster, tmp_path)

    operators.append(run_as_chart(cluster, identity, installed, tmp_path / "single.log"))
    the_examples_work(cluster)
    cluster_wide_refusals(identity)
    for upgrade in (upgrade_to_two_replicas, upgrade_to_watched_namespaces):
        assert_clean_log(operators[-1])
        stop_operator(operators[-1])
        operators.append(upgrade(cluster, run_helm, identity, tmp_path / f"{upgrade.__name__}.log"))
        made |= {object_id(d) for d in run_helm.manifest()}
    delete_tessera_resources(cluster)
    assert_clean_log(operators[-1])
    stop_operator(operators[-1])
    run_helm("uninstall", RELEASE, "-n", HOME)

    after = snapshot(cluster)
    assert not made & after, f"left by the chart: {sorted(made & after)}"
    examples = set(TENANTS)  # what the examples made there is the user's, not the chart's
    stray = {o for o in after - before if o[2] not in examples and not (o[1] == "Namespace" and o[3] in examples)}
    assert stray == KEPT, f"unexpected: {sorted(stray - KEPT)}; missing: {sorted(KEPT - stray)}"


# --- the issuer service ------------------------------------------------------------------------------


def test_issuer_runs_with_the_charts_identity(
    private_cluster: Cluster, tmp_path: Path, operators: list[Operator]
) -> None:
    """``tessera issuer`` with the issuer Deployment's arguments and environment, as the chart's issuer
    ServiceAccount: it exchanges a Kubernetes token, honours a JWT-bearer assertion once, sweeps the
    assertion ids, and is refused everything else."""
    cluster, run_helm = private_cluster, Helm(tmp_path / "helm", private_cluster)
    run_helm("install", RELEASE, str(CHART), "-n", HOME, "--create-namespace", *FAST)
    installed = run_helm.manifest()
    ca = chart_ca_mount(cluster, installed, tmp_path)  # what kubelet would mount into the operator Pod
    operators.append(
        run_as_chart(
            cluster, operator_identity(cluster, tmp_path), installed, tmp_path / "operator.log",
            TESSERA_ISSUER_CA_FILE=str(ca),
        )
    )  # fmt: skip
    identity = operator_identity(cluster, tmp_path, f"{RELEASE}-issuer")

    [container] = deployment_in(installed, f"{RELEASE}-issuer")["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["tessera"] and container["args"][0] == "issuer"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["TESSERA_ISSUER"] == ISSUER and env["TESSERA_KUBERNETES_AUDIENCE"] == ISSUER
    chart_tls(cluster)
    tls = issuer_kit.tls_files(tmp_path / "tls")  # the chart's certificate names the Service, not 127.0.0.1
    port = free_port()
    issuer = issuer_kit.start_issuer(cluster, HOME, port, tls, tmp_path / "issuer.log", env, identity.kubeconfig)
    try:
        cluster.kubectl("create", "namespace", "apps")
        cluster.kubectl("create", "serviceaccount", "robot", "-n", "apps")
        robot = {"kubernetesServiceAccount": {"name": "robot"}, "token": {"audiences": ["ledger"]}}
        apply(cluster, "apps", SA, "robot", robot)
        waiting.until(lambda: ready(cluster, "apps", "serviceaccounts", "robot"), what="robot Ready")
        subject_token = cluster.kubectl("create", "token", "robot", "-n", "apps", "--audience", ISSUER).stdout.strip()
        status, answer = issuer.token(
            {
                "grant_type": exchange.TOKEN_EXCHANGE,
                "subject_token": subject_token,
                "subject_token_type": exchange.TYPE_JWT,
            }
        )
        assert status == 200, answer
        assert jwt.decode(answer["access_token"], options={"verify_signature": False})["iss"] == ISSUER

        apply(cluster, "apps", SAK, "robot-key", {"serviceAccountName": "robot", "generate": {"algorithm": "ES256"}})
        waiting.until(lambda: ready(cluster, "apps", "serviceaccountkeys", "robot-key"), what="key Ready")
        secret = cluster.secret("apps", "robot-key-tessera-key")
        assert secret is not None
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        now = int(time.time())
        claims = {
            "iss": data["subject"],
            "sub": data["subject"],
            "aud": f"{ISSUER}/token",
            "exp": now + 60,
            "jti": "one",
        }
        signed = jwt.encode(claims, keys.load_private_pem(data["private-key.pem"]), "ES256", {"kid": data["key-id"]})
        form = {"grant_type": exchange.JWT_BEARER, "assertion": signed}
        assert issuer.token(form)[0] == 200
        assert issuer.token(form)[1]["error"] == "invalid_grant"  # replayed: the Lease exists
        kube = kube_client.Clients(identity.api, identity.core, identity.custom)
        later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        assert asyncio.run(issuing.sweep_jtis(kube, HOME, later)) == 1

        assert forbidden(identity, "get", "secrets", "-n", HOME)  # only the issuer keys, by name
        assert forbidden(identity, "get", "secret", "robot-key-tessera-key", "-n", "apps")
        assert forbidden(
            identity, "patch", "tsa", "robot", "-n", "apps", "--type=merge", "-p", '{"spec":{"disabled":true}}'
        )
        assert forbidden(identity, "create", "configmap", "x", "-n", HOME, "--dry-run=server")
        assert forbidden(identity, "get", "pods", "-A")
        assert allowed(identity, "get", "secret", settings.ISSUER_KEYS_SECRET, "-n", HOME)

        # the live bundle channel: the trust bundles (with the issuer's CA beside them), and nothing else
        cluster.kubectl("label", "namespace", "apps", "iam.tessera.dev/trust-bundle=enabled")
        data = waiting.until(lambda: bundle_data(cluster, "apps"), what="the trust bundle of apps")
        assert data["issuer-ca.crt"] == ca.read_text()
        pod_token = cluster.kubectl("create", "token", "robot", "-n", "apps", "--audience", ISSUER).stdout.strip()
        target = protocol.bundle_target("apps", 0, 0)
        polled = issuer.request("GET", target, headers={"Authorization": f"Bearer {pod_token}"})
        assert polled[0] == 200 and polled[2].decode() == data["bundle.json"]
        by_name = ("--field-selector", "metadata.name=tessera-trust-bundle")
        assert allowed(identity, "get", "configmaps", "-A", *by_name)
        assert allowed(identity, "get", "configmaps", "-A", "--watch", "--request-timeout=1s", *by_name)
        assert allowed(identity, "get", "configmap", "tessera-trust-bundle", "-n", "apps")
        assert forbidden(identity, "get", "configmaps", "-A")
        assert forbidden(identity, "get", "configmap", "kube-root-ca.crt", "-n", "apps")
        text = issuer.logs()
        assert not re.search(r"forbidden|\b403\b", text, re.I), text[-3000:]
    finally:
        stop_process(issuer.process)


def bundle_data(cluster: Cluster, namespace: str) -> dict[str, str] | None:
    try:
        return cluster.configmap_data(namespace, settings.TRUST_BUNDLE_CONFIGMAP)
    except kubernetes.client.ApiException:
        return None


def chart_ca_mount(cluster: Cluster, installed: list[dict[str, Any]], folder: Path) -> Path:
    """The file the operator Deployment's TESSERA_ISSUER_CA_FILE names, as kubelet would fill it: the
    ca.crt of the issuer's TLS Secret (the volume is checked to say so)."""
    [container] = deployment_in(installed)["spec"]["template"]["spec"]["containers"]
    path = Path(next(e["value"] for e in container["env"] if e["name"] == "TESSERA_ISSUER_CA_FILE"))
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    [volume] = [
        v for v in deployment_in(installed)["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    assert volume["secret"]["secretName"] == f"{RELEASE}-issuer-tls"
    assert volume["secret"]["items"] == [{"key": "ca.crt", "path": path.name}]
    secret = cluster.secret(HOME, f"{RELEASE}-issuer-tls")
    assert secret is not None
    local = folder / "issuer-ca.crt"
    local.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
    return local


def chart_tls(cluster: Cluster) -> None:
    """The Secret the chart made: a certificate for the Service's names and the issuer's host, from its CA."""
    secret = cluster.secret(HOME, f"{RELEASE}-issuer-tls")
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    ca = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["ca.crt"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert {f"{RELEASE}.{HOME}.svc", "tessera.example.com"} <= set(names)
    cert.verify_directly_issued_by(ca)  # raises when the CA did not sign it
