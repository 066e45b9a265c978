"""The sidecar's own HTTP/1.1 layer (asyncio + httptools), as raw bytes on real sockets: keep-alive
and pipelining answered in order, Expect: 100-continue, chunked request bodies through the proxy, an
unread body dropped so the connection stays usable, HTTP/1.0, HEAD, and the limits: a malformed
request is 400, a request smuggling attempt (Content-Length with Transfer-Encoding) is refused, a
target over 64 KiB is 414, a head too large is 431, never a 500 or a hang."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sidecar_harness import Sidecar, start_echo, start_sidecar, write_rules
from tests.sidecar_kit import Kit, write_bundle_dir


@pytest.fixture
def kit() -> Kit:
    return Kit.make(now=int(time.time()))


@pytest.fixture
def sidecar(tmp_path: Path, kit: Kit) -> Iterator[Sidecar]:
    folder = tmp_path / "bundle"
    write_bundle_dir(folder, kit.bundle_text())
    echo = start_echo(tmp_path)
    running = start_sidecar(tmp_path, folder, write_rules(tmp_path), upstream=echo.port)
    yield running
    running.stop()
    echo.stop()
    assert "Traceback" not in running.logs(), running.logs()[-3000:]


class Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        """One response (status, lower-case headers, body) by Content-Length or chunked framing
        (``head_only``: the answer to a HEAD request, which has no body)."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a response head: {self.buffer[:200]!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if status in (100, 204, 304) or head_only:
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    self._fill()
                size_line, self.buffer = self.buffer.split(b"\r\n", 1)
                size = int(size_line, 16)
                while len(self.buffer) < size + 2:
                    self._fill()
                body, self.buffer = body + self.buffer[:size], self.buffer[size + 2 :]
                if size == 0:
                    return status, headers, body
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                break
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed(self) -> bool:
        """Whether the peer closes the connection (what it sends first is kept in the buffer)."""
        self.sock.settimeout(5)
        try:
            while chunk := self.sock.recv(65536):
                self.buffer += chunk
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def auth_request(token: str, uri: str = "/orders/1") -> bytes:
    return (f"GET /auth HTTP/1.1\r\nHost: s\r\nX-Original-URI: {uri}\r\nX-Original-Method: GET\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode()  # fmt: skip


def test_pipelined_requests_are_answered_in_order_on_one_connection(sidecar: Sidecar, kit: Kit) -> None:
    conn = Conn(sidecar.port)
    try:
        conn.send(auth_request(kit.issued()) + auth_request("bad") + b"GET /healthz HTTP/1.1\r\nHost: s\r\n\r\n")
        assert [conn.response()[0] for _ in range(3)] == [200, 401, 200]
        conn.send(b"HEAD /healthz HTTP/1.1\r\nHost: s\r\n\r\n")
        status, headers, body = conn.response(head_only=True)
        assert status == 200 and body == b"" and headers["content-length"] == "3"
        conn.send(auth_request(kit.issued()))  # the connection is still usable after HEAD
        assert conn.response()[0] == 200
    finally:
        conn.close()


def test_bodies_through_the_proxy_chunked_and_with_100_continue(sidecar: Sidecar, kit: Kit) -> None:
    assert sidecar.proxy_port is not None
    conn = Conn(sidecar.proxy_port)
    try:
        parts = [bytes([i]) * 70_000 for i in range(5)]
        chunked = b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        head = (f"POST /orders/1/cancel HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n"
                f"Authorization: Bearer {kit.self_signed()}\r\n\r\n").encode()  # fmt: skip
        conn.send(head + chunked)
        status, _, body = conn.response()
        assert status == 200 and json.loads(body)["bodySha256"] == hashlib.sha256(b"".join(parts)).hexdigest()

        payload = b"x" * 100_000
        conn.send((f"POST /orders/1/cancel HTTP/1.1\r\nHost: s\r\nContent-Length: {len(payload)}\r\n"
                   f"Expect: 100-continue\r\nAuthorization: Bearer {kit.self_signed()}\r\n\r\n").encode())  # fmt: skip
        assert conn.response()[0] == 100  # the sidecar asks for the body once it passes it on
        conn.send(payload)
        status, _, body = conn.response()
        assert status == 200 and json.loads(body)["bodyBytes"] == len(payload)
    finally:
        conn.close()


def test_a_refused_upload_is_dropped_and_the_connection_stays_usable(sidecar: Sidecar, kit: Kit) -> None:
    assert sidecar.proxy_port is not None
    conn = Conn(sidecar.proxy_port)
    try:
        payload = b"y" * 2_000_000
        conn.send(f"POST /orders/1/cancel HTTP/1.1\r\nHost: s\r\nContent-Length: {len(payload)}\r\n\r\n".encode())
        conn.send(payload)
        status, headers, _ = conn.response()
        assert status == 401 and headers["x-tessera-reason"] == "missing_token"
        conn.send(f"GET /orders/1 HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer {kit.issued()}\r\n\r\n".encode())
        assert conn.response()[0] == 200
    finally:
        conn.close()


def test_http_1_0_gets_an_answer_and_the_connection_closes(sidecar: Sidecar, kit: Kit) -> None:
    assert sidecar.proxy_port is not None
    conn = Conn(sidecar.proxy_port)
    try:
        conn.send(f"GET /orders/big/300000 HTTP/1.0\r\nAuthorization: Bearer {kit.issued()}\r\n\r\n".encode())
        assert conn.closed()
        head, body = conn.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower() and len(body) == 300_000
    finally:
        conn.close()


BAD = [
    ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
    (
        "smuggling",
        b"POST /auth HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("two lengths", b"POST /auth HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
    ("folded header", b"GET /auth HTTP/1.1\r\nHost: s\r\nX-A: 1\r\n  folded\r\n\r\n", 400),
    # the head is good, so the request is answered (no token); the broken body then closes the connection
    ("bad chunk size", b"POST /auth HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 401),
    ("long target", b"GET /auth/" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: s\r\n\r\n", 414),
    ("huge head", b"GET /auth HTTP/1.1\r\nHost: s\r\n" + b"X-Pad: " + b"p" * 300_000 + b"\r\n\r\n", 431),
    ("many fields", b"GET /auth HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(300)) + b"\r\n", 431),
]


@pytest.mark.parametrize(("name", "data", "status"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_4xx_and_the_connection_closes(
    sidecar: Sidecar, name: str, data: bytes, status: int
) -> None:
    conn = Conn(sidecar.port)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.send(data)  # the sidecar may stop reading a huge head before it was all sent
        answered = conn.response()
        assert answered[0] == status, (name, answered)
        assert conn.closed()
    finally:
        conn.close()
    assert Conn(sidecar.port).sock  # still serving


def test_a_64_kib_token_header_reaches_the_verifier(sidecar: Sidecar) -> None:
    conn = Conn(sidecar.port)
    try:
        conn.send(auth_request("a" * 65_000))
        status, headers, _ = conn.response()
        assert status == 401 and headers["x-tessera-reason"] == "token_too_large"
    finally:
        conn.close()


def test_the_sidecar_process_answers_when_the_proxy_target_is_an_absolute_form(
    sidecar: Sidecar, kit: Kit, tmp_path: Path
) -> None:
    """A proxy-style absolute target is not a canonical path: refused by the rules, never forwarded."""
    assert sidecar.proxy_port is not None
    conn = Conn(sidecar.proxy_port)
    try:
        absolute = "GET http://elsewhere/orders/1 HTTP/1.1\r\nHost: s\r\n"
        conn.send(f"{absolute}Authorization: Bearer {kit.issued()}\r\n\r\n".encode())
        status, headers, _ = conn.response()
        assert status == 403 and headers["x-tessera-reason"] == "path_not_canonical"
    finally:
        conn.close()
