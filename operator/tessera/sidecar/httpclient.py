"""A small HTTP/1.1 client on asyncio streams and httptools: the sidecar's calls to the app (reverse
proxy), to configured upstreams (egress) and to the issuer (the bundle channel, token exchange).

One :class:`Pool` per origin (scheme, host, port) keeps idle connections for reuse (at most
``limit`` open at once; idle ones close after ``keepalive`` seconds). Request bodies are sent as
given (bytes with ``Content-Length``, or streamed: raw when the caller names the length, chunked
otherwise); response bodies are read only as the caller asks for them (:meth:`Answer.chunks`), so a
slow reader slows the upstream rather than filling memory. A connection goes back to the pool only
when its response was read to the end and both sides allow keep-alive. A request on a reused
connection that fails before any answer arrives is sent again once on a new connection, when its
body can be sent again (bytes or none).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence

import httptools

_FRAMING = frozenset({"host", "content-length", "transfer-encoding"})
HEAD_LIMIT = 262144  # a response head larger than this is refused
READ_SIZE = 65536


class UpstreamError(ConnectionError):
    """The upstream could not be reached or answered something that is not HTTP."""


@dataclasses.dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Origin:
        """``http(s)://host[:port]`` (a path is not allowed: requests keep theirs)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r}: expected http://host[:port] or https://host[:port]")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"{url!r}: give only the scheme, host and port")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname, port)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}"


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = time.monotonic()
        self.used = False

    def alive(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


class Answer:
    """A response whose body is read on demand; release it (read to the end, or :meth:`close`)."""

    def __init__(self, pool: Pool, connection: _Connection, method: str) -> None:
        self._pool, self._connection, self._method = pool, connection, method
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self._parser = httptools.HttpResponseParser(self)
        self._body: collections.deque[bytes] = collections.deque()
        self._head_done = False
        self._complete = False
        self._head_bytes = 0
        self._released = False
        self._close_delimited = False
        self._keep_alive = False

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.reason += status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer: the real one follows
            self.headers, self.reason = [], ""
            return
        self._head_done = True
        self._keep_alive = self._parser.should_keep_alive()
        if self._method == "HEAD":
            self._complete = True

    def on_body(self, data: bytes) -> None:
        self._body.append(data)

    def on_message_complete(self) -> None:
        if self._head_done:
            self._complete = True

    async def _feed(self) -> None:
        data = await self._connection.reader.read(READ_SIZE)
        if not data:
            if self._head_done and self.header("content-length") is None and self.header("transfer-encoding") is None:
                self._complete = True  # a body delimited by the connection closing (the connection is not reused)
                self._close_delimited = True
                return
            raise UpstreamError("the upstream closed the connection before its answer ended")
        if not self._head_done:
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_LIMIT:
                raise UpstreamError("the upstream's answer head is too large")
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            raise UpstreamError("the upstream switched protocols") from exc
        except httptools.HttpParserError as exc:
            raise UpstreamError(f"the upstream's answer is not HTTP/1.1 ({type(exc).__name__})") from exc

    async def _read_head(self) -> None:
        while not self._head_done:
            await self._feed()

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                while self._body:
                    yield self._body.popleft()
                if self._complete:
                    break
                await self._feed()
        except BaseException:
            self.close()
            raise
        self._release()

    async def read(self, limit: int = 16 * 1024 * 1024) -> bytes:
        parts, size = [], 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                self.close()
                raise UpstreamError(f"the answer is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        reusable = self._complete and not self._close_delimited and self._keep_alive and self._method != "HEAD"
        self._pool._give_back(self._connection, reusable)

    def close(self) -> None:
        """Give up on the rest of the body (the connection is not reused)."""
        if not self._released:
            self._released = True
            self._pool._give_back(self._connection, False)


Body = bytes | AsyncIterator[bytes] | None


class Pool:
    def __init__(
        self,
        origin: Origin,
        limit: int = 256,
        keepalive: float = 30.0,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.origin = origin
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(limit)
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._ssl = ssl_context if origin.scheme == "https" else None
        if origin.scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    self.origin.host,
                    self.origin.port,
                    ssl=self._ssl,
                    server_hostname=self.origin.host if self._ssl else None,
                    limit=READ_SIZE,
                ),
                self._connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamError(f"cannot connect to {self.origin}: {type(exc).__name__}") from exc
        return _Connection(reader, writer)

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.alive() and now - connection.idle_since < self._keepalive:
                return connection
            connection.close()
        return None

    def _give_back(self, connection: _Connection, reusable: bool) -> None:
        self._slots.release()
        if reusable and connection.alive():
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: Body = None,
        length: int | None = None,
        head_seconds: float | None = None,
    ) -> Answer:
        """Send a request (``target`` in origin form) and return once the answer's head arrived.
        ``length``: the streamed body's length when known. ``head_seconds``: for the head to arrive."""
        await self._slots.acquire()
        try:
            replayable = not isinstance(body, AsyncIterator)
            connection = self._take_idle()
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
            try:
                return await self._exchange(connection, method, target, headers, body, length, head_seconds)
            except (ConnectionError, OSError) as exc:  # UpstreamError included
                connection.close()
                if not (reused and replayable and not isinstance(exc, _Answered)):
                    raise _plain(exc)  # noqa: B904 (the cause is chained where it is not the error itself)
            connection = await self._connect()  # the reused connection had been closed by the upstream
            try:
                return await self._exchange(connection, method, target, headers, body, length, head_seconds)
            except (ConnectionError, OSError) as exc:
                connection.close()
                raise _plain(exc)  # noqa: B904
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(
        self,
        connection: _Connection,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: Body,
        length: int | None,
        head_seconds: float | None,
    ) -> Answer:
        head = bytearray(f"{method} {target} HTTP/1.1\r\nHost: {self.origin.host_header}\r\n".encode("latin-1"))
        for name, value in headers:
            if name.lower() not in _FRAMING:  # the pool frames the message itself
                head += f"{name}: {value}\r\n".encode("latin-1", "replace")
        chunked = False
        if isinstance(body, bytes):
            if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
                head += f"Content-Length: {len(body)}\r\n".encode()
        elif body is not None:
            if length is not None:
                head += f"Content-Length: {length}\r\n".encode()
            else:
                head += b"Transfer-Encoding: chunked\r\n"
                chunked = True
        head += b"\r\n"
        writer = connection.writer
        if isinstance(body, bytes):
            writer.write(bytes(head) + body)
        else:
            writer.write(bytes(head))
            if body is not None:
                async for chunk in body:
                    if chunk:
                        writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                        await writer.drain()
                if chunked:
                    writer.write(b"0\r\n\r\n")
        await writer.drain()
        answer = Answer(self, connection, method)
        try:
            await asyncio.wait_for(answer._read_head(), head_seconds)
        except TimeoutError as exc:
            raise _Answered(f"{self.origin} did not answer within {head_seconds} s") from exc
        except UpstreamError as exc:
            if answer._head_bytes:
                raise _Answered(str(exc)) from exc
            raise
        return answer

    async def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


class _Answered(UpstreamError):
    """The upstream started answering (or took too long): sending again could act twice."""


def _plain(exc: BaseException) -> UpstreamError:
    """The error as an :class:`UpstreamError` (others wrapped, with their cause)."""
    if isinstance(exc, UpstreamError):
        return exc
    wrapped = UpstreamError(f"{type(exc).__name__}: {exc}")
    wrapped.__cause__ = exc
    return wrapped
