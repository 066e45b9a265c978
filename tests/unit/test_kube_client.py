"""API calls that get no answer: a server that accepts and never replies, a port nobody listens on.
Both fail within the request timeout as :class:`errors.Unavailable`, in one stable line (no addresses)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from collections.abc import Iterator

import kubernetes
import pytest

from tessera import errors
from tessera.kube import client


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers on them."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clients_for(port: int) -> client.Clients:
    config = kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}")
    config.retries = 0
    api = kubernetes.client.ApiClient(config)
    pool = concurrent.futures.ThreadPoolExecutor(2)
    return client.Clients(api, kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api), pool)


def read_secret(kube: client.Clients) -> None:
    """Read a Secret, giving up (a failed test, not a hung one) after 5 s."""
    call = kube.call("reading Secret a/b", kube.core.read_namespaced_secret, "b", "a")
    asyncio.run(asyncio.wait_for(call, 5))


def test_a_call_that_gets_no_answer_ends_at_the_read_timeout(silent_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "READ_TIMEOUT", 0.5)
    kube = clients_for(silent_port)
    started = time.monotonic()
    with pytest.raises(errors.Unavailable) as failed:
        read_secret(kube)
    assert time.monotonic() - started < 2
    assert str(failed.value) == "reading Secret a/b: the API server did not answer (ReadTimeoutError)"
    assert failed.value.__cause__ is None and failed.value.__suppress_context__


def test_a_refused_connection_is_unavailable_in_one_stable_line() -> None:
    kube = clients_for(closed_port())
    with pytest.raises(errors.Unavailable) as failed:
        read_secret(kube)
    assert str(failed.value) == "reading Secret a/b: the API server did not answer (NewConnectionError)"
    assert "127.0.0.1" not in str(failed.value)
