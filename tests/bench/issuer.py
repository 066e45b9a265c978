"""The issuer service's speed, each figure next to a baseline from the same run.

- Token endpoint on one core (the issuer pinned to CPU 1 with ``taskset``, the load generator on
  CPU 0): exchanges per second and p50/p99 latency for an identity provider's token (verify its
  ES256 signature, one consistent read of the provider, sign) and for a Kubernetes service account
  token (a TokenReview and one consistent read of the account, sign); next to raw ``cryptography``
  ES256 sign + verify in one process on one core (the floor of the cryptography alone).
- Unknown-kid storm: tokens naming kids the provider never published, as fast as the issuer takes
  them, for ``storm_seconds``; the requests that reach the provider (a local HTTPS JWKS server that
  counts them), per minute, next to the number of refused exchanges in the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
from aiohttp import ClientSession, TCPConnector
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tessera.core import exchange
from tessera.crypto import keys
from tests import harness, issuer_kit, waiting
from tests.bench import common

AUDIENCE = "tessera-exchange"


def raw_sign_and_verify(count: int) -> float:
    """ES256 sign + verify of a token-sized input per second, in this process (one core)."""
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key()
    data = b"x" * 300
    algorithm = ec.ECDSA(hashes.SHA256())

    def both() -> None:
        public.verify(private.sign(data, algorithm), data, algorithm)

    return common.rate(both, count)


async def _load(
    issuer: issuer_kit.Issuer, forms: Callable[[], str], seconds: float, concurrency: int
) -> tuple[list[float], dict[int, int]]:
    """POST bodies from ``forms`` for ``seconds`` over ``concurrency`` kept-alive connections."""
    samples: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    url = f"{issuer.url}/token"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    async with ClientSession(connector=TCPConnector(limit=concurrency, ssl=issuer.tls.context())) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                body = forms()
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as answer:
                    await answer.read()
                samples.append(time.perf_counter() - started)
                statuses[answer.status] = statuses.get(answer.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, statuses


def load(issuer: issuer_kit.Issuer, forms: Callable[[], str], seconds: float, concurrency: int) -> dict[str, Any]:
    samples, statuses = asyncio.run(_load(issuer, forms, seconds, concurrency))
    return {"per_s": len(samples) / seconds, "statuses": statuses, **common.percentiles(samples)}


def form(token: str) -> str:
    fields = {"grant_type": exchange.TOKEN_EXCHANGE, "subject_token": token, "subject_token_type": exchange.TYPE_JWT}
    return urllib.parse.urlencode(fields)


@contextlib.contextmanager
def stack(folder: Path, pin: bool) -> Iterator[tuple[harness.Cluster, issuer_kit.Issuer, issuer_kit.Tls]]:
    with harness.local_cluster(folder / "cp") as cluster:
        system = harness.create_namespace(cluster, "tessera-system")
        tls = issuer_kit.tls_files(folder / "tls")
        port = harness.free_port()
        operator = harness.start_operator(
            cluster, system, folder / "operator.log", extra_env={"TESSERA_ISSUER": f"https://127.0.0.1:{port}"}
        )
        prefix = ["taskset", "-c", "1"] if pin else []
        try:
            issuer = issuer_kit.start_issuer(cluster, system, port, tls, folder / "issuer.log", prefix=prefix)
            try:
                yield cluster, issuer, tls
            finally:
                harness.stop_process(issuer.process)
        finally:
            harness.stop_operator(operator)


def apply(cluster: harness.Cluster, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def provider_manifest(name: str, issuer: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "iam.tessera.dev/v1alpha1",
        "kind": "IdentityProvider",
        "metadata": {"name": name},
        "spec": {"issuer": issuer, "audiences": [AUDIENCE], **spec},
    }


def issuer_bench(seconds: float, concurrency: int, storm_seconds: float, crypto_count: int) -> dict[str, Any]:
    pin = shutil.which("taskset") is not None
    with tempfile.TemporaryDirectory() as tmp, stack(Path(tmp), pin) as (cluster, issuer, tls):
        results: dict[str, Any] = {"issuer_pinned_to_one_core": pin, "concurrency": concurrency, "seconds": seconds}
        results["baseline_raw_es256_sign_and_verify_per_s"] = raw_sign_and_verify(crypto_count)

        # An identity provider with an inline key: its tokens verified, exchanged.
        private = keys.generate("ES256")
        jwk = keys.public_jwk(private.public_key(), "bench")
        apply(cluster, provider_manifest("inline", "https://idp.bench.example", jwks={"keys": [jwk]}))
        now = int(time.time())
        claims = {"iss": "https://idp.bench.example", "sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + 3600}
        user_token = jwt.encode(claims, private, "ES256", {"kid": "bench"})
        waiting.until(lambda: _ok(issuer, user_token), what="the provider exchange")
        results["provider_token_exchange"] = load(issuer, lambda: form(user_token), seconds, concurrency)

        # A Kubernetes service account token (TokenReview on every exchange).
        ns = harness.create_namespace(cluster, "bench")
        cluster.kubectl("create", "serviceaccount", "robot", "-n", ns)
        sa = {
            "apiVersion": "iam.tessera.dev/v1alpha1",
            "kind": "ServiceAccount",
            "metadata": {"name": "robot", "namespace": ns},
        }
        apply(cluster, {**sa, "spec": {"kubernetesServiceAccount": {"name": "robot"}}})
        kube_token = cluster.kubectl("create", "token", "robot", "-n", ns, "--audience", issuer.url).stdout.strip()
        waiting.until(lambda: _ok(issuer, kube_token), what="the Kubernetes exchange")
        results["kubernetes_token_exchange"] = load(issuer, lambda: form(kube_token), seconds, concurrency)
        floor = results["baseline_raw_es256_sign_and_verify_per_s"]
        for key in ("provider_token_exchange", "kubernetes_token_exchange"):
            results[key]["over_raw_sign_and_verify"] = results[key]["per_s"] / floor

        results["unknown_kid_storm"] = storm(cluster, issuer, tls, storm_seconds, concurrency)
        return results


def _ok(issuer: issuer_kit.Issuer, token: str) -> bool:
    status, _, _ = issuer.request(
        "POST", "/token", form(token).encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    )
    return status == 200


def storm(
    cluster: harness.Cluster, issuer: issuer_kit.Issuer, tls: issuer_kit.Tls, seconds: float, concurrency: int
) -> dict[str, Any]:
    published = keys.generate("ES256")
    jwks = {"keys": [keys.public_jwk(published.public_key(), "published")]}
    with issuer_kit.CountingJwks(tls, jwks) as provider:
        apply(cluster, provider_manifest("storm", provider.issuer, caBundle=tls.ca.read_text()))
        now = int(time.time())
        claims = {"iss": provider.issuer, "sub": "bob", "aud": AUDIENCE, "iat": now, "exp": now + 3600}
        good = jwt.encode(claims, published, "ES256", {"kid": "published"})
        waiting.until(lambda: _ok(issuer, good), what="the storm provider's first exchange")
        stranger = keys.generate("ES256")
        before = provider.requests

        def forged() -> str:
            return form(jwt.encode(claims, stranger, "ES256", {"kid": uuid.uuid4().hex}))

        result = load(issuer, forged, seconds, concurrency)
        reached = provider.requests - before
    return {
        "seconds": seconds,
        "exchanges_refused": result["statuses"],
        "exchanges_per_s": result["per_s"],
        "provider_requests": reached,
        "provider_requests_per_minute": reached * 60 / seconds,
        "note": "each fetch is 2 requests (discovery + JWKS); the issuer refetches for unknown kids at most once a "
        "minute per provider, the operator on its schedule (refreshSeconds) and while the provider is not Ready",
    }
