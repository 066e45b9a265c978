"""A small HTTP/1.1 server on plain asyncio and httptools (llhttp, the parser of Node.js): what the
sidecar serves, and nothing more.

Why not aiohttp: its import alone makes a process of about 37 MB, most of the sidecar's footprint
(docs/benchmarks.md measures the alternatives). llhttp does the parsing that matters for safety
(request smuggling: conflicting Content-Length / Transfer-Encoding, obsolete folding, bad chunk
sizes are errors), this module the rest:

- keep-alive, with requests of one connection answered in order (pipelining included);
- request bodies streamed to the handler with flow control (reading pauses while
  :data:`BODY_BUFFER` bytes wait), ``Expect: 100-continue`` answered when the handler first reads;
  a body the handler leaves unread is read and dropped (up to :data:`DRAIN_SECONDS`) so the
  connection can be kept, else it is closed;
- responses as bytes (``Content-Length``) or streamed chunks (``Transfer-Encoding: chunked``, or raw
  when the handler names a ``Content-Length``), written with back-pressure;
- limits, answered before any handler runs: a request target over :data:`MAX_TARGET` bytes (414),
  a head over :data:`MAX_HEAD` bytes or :data:`MAX_FIELDS` fields (431), a malformed request (400);
  idle connections close after :data:`IDLE_SECONDS`.

Upgrades (WebSocket, CONNECT) are not supported: the handler answers the request and the
connection closes. Handlers get a :class:`Request` and return a :class:`Response`; an exception in
a handler is logged by type and answered 500 (handlers are expected to answer every case).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import http
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import httptools

log = logging.getLogger("tessera.http")

MAX_TARGET = 65536
MAX_HEAD = 131072  # request line and every header field together
MAX_FIELDS = 256
BODY_BUFFER = 262144
IDLE_SECONDS = 75.0
DRAIN_SECONDS = 5.0
_NO_BODY_STATUS = frozenset({204, 304})


class _Refusal(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class Body:
    """A request body as it arrives: :meth:`chunks` yields it, :meth:`read` collects it."""

    def __init__(self, connection: _Connection | None, expects_continue: bool = False) -> None:
        self._connection = connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._continue = expects_continue
        self.done = connection is None
        self.failed = False
        self.dropping = False

    def feed(self, data: bytes) -> None:
        if self.dropping:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > BODY_BUFFER and self._connection is not None:
            self._connection.pause()
        self._wake()

    def finish(self, failed: bool = False) -> None:
        self.done, self.failed = True, failed
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait_done(self) -> None:
        while not self.done:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def chunks(self) -> AsyncIterator[bytes]:
        if self._continue and self._connection is not None:
            self._continue = False
            self._connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered <= BODY_BUFFER // 2 and self._connection is not None:
                    self._connection.resume()
                yield chunk
            elif self.failed:
                raise ConnectionError("the client went away before its request body ended")
            elif self.done:
                return
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter

    async def read(self, limit: int) -> bytes:
        """The whole body; :class:`ValueError` once it exceeds ``limit`` bytes."""
        parts, size = [], 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise ValueError(f"the body is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)


@dataclasses.dataclass
class Request:
    method: str
    target: str  # as sent: path and query (origin form), or whatever the client wrote
    headers: list[tuple[str, str]]  # names as sent; latin-1 decoded
    peer: str | None
    body: Body
    http11: bool = True
    keep_alive: bool = True
    has_body: bool = False  # Content-Length > 0 or chunked
    _index: dict[str, list[str]] | None = dataclasses.field(default=None, repr=False)

    def all(self, name: str) -> list[str]:
        """Every value of a header, case-insensitively (an empty list when absent)."""
        if self._index is None:
            index: dict[str, list[str]] = {}
            for key, value in self.headers:
                index.setdefault(key.lower(), []).append(value)
            self._index = index
        return self._index.get(name, [])

    def get(self, name: str) -> str | None:
        """The first value of a header (``name`` in lower case), or None."""
        found = self.all(name)
        return found[0] if found else None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


@dataclasses.dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes | AsyncIterator[bytes] = b""
    reason: str | None = None
    close: bool = False  # close the connection after this response


Handler = Callable[[Request], Awaitable[Response]]


_PHRASES = {status.value: status.phrase for status in http.HTTPStatus}


def _reason(status: int) -> str:
    return _PHRASES.get(status, "Unknown")


def _encode_head(status: int, reason: str | None, headers: Iterable[tuple[str, str]]) -> bytearray:
    head = bytearray(f"HTTP/1.1 {status} {reason or _reason(status)}\r\n".encode("latin-1"))
    for name, value in headers:
        head += f"{name}: {value}\r\n".encode("latin-1", "replace")
    return head


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler, server: Server) -> None:
        self._handler, self._server = handler, server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._queue: asyncio.Queue[Request | None] = asyncio.Queue()
        self._current: Request | None = None
        self._url = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._head_size = 0
        self._in_head = False
        self._paused = False
        self._closed = False
        self._writable: asyncio.Future[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._last_activity = 0.0
        self._busy = False

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) and peer else None
        self._server.connections.add(self)
        loop = asyncio.get_running_loop()
        self._worker = loop.create_task(self._serve())
        self._last_activity = loop.time()
        loop.call_later(IDLE_SECONDS, self._check_idle)

    def _check_idle(self) -> None:
        """Close a connection that neither sent nor was answered anything for IDLE_SECONDS (one timer
        per idle period, not one per request)."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_activity
        if quiet >= IDLE_SECONDS and not self._busy:
            self.close()
        else:
            loop.call_later(max(1.0, IDLE_SECONDS - quiet), self._check_idle)

    def data_received(self, data: bytes) -> None:
        self._last_activity = asyncio.get_running_loop().time()
        try:
            if self._in_head or self._current is None:  # httptools keeps a partial head in memory: bound it
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD + MAX_TARGET + BODY_BUFFER:
                    raise _Refusal(431)
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.pause()  # the request is answered, then the connection closes
            if self._current is not None:
                self._current.keep_alive = False
                self._current.body.finish()
        except _Refusal as refusal:
            self._fail(refusal.status)
        except httptools.HttpParserCallbackError as exc:
            self._fail(exc.__context__.status if isinstance(exc.__context__, _Refusal) else 400)
        except httptools.HttpParserError:
            self._fail(400)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.connections.discard(self)
        if self._current is not None and not self._current.body.done:
            self._current.body.finish(failed=True)
        if self._writable is not None and not self._writable.done():
            self._writable.set_exception(ConnectionResetError("the client went away"))
        self._queue.put_nowait(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    # --- httptools callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head, self._head_bytes, self._head_size = True, 0, 0
        self._url = bytearray()
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_TARGET:
            raise _Refusal(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if len(self._headers) >= MAX_FIELDS or self._head_size > MAX_HEAD:
            raise _Refusal(431)
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        expects = parser.get_http_version() == "1.1" and any(
            n.lower() == "expect" and v.strip().lower() == "100-continue" for n, v in self._headers
        )
        body = Body(self, expects)  # (a request without a body has none to continue with: harmless)
        request = Request(
            parser.get_method().decode("ascii", "replace"),
            self._url.decode("latin-1"),
            self._headers,
            self._peer,
            body,
            http11=parser.get_http_version() == "1.1",
            keep_alive=parser.should_keep_alive(),
        )
        length = request.get("content-length")
        request.has_body = request.get("transfer-encoding") is not None or (length is not None and length != "0")
        self._current = request
        self._queue.put_nowait(request)

    def on_body(self, data: bytes) -> None:
        if self._current is not None:
            self._current.body.feed(data)

    def on_message_complete(self) -> None:
        if self._current is not None:
            self._current.body.finish()
        self._head_bytes = 0

    # --- serving -----------------------------------------------------------------------------------

    def pause(self) -> None:
        if not self._paused and self._transport is not None and not self._closed:
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None and not self._closed:
            self._paused = False
            self._transport.resume_reading()

    def write(self, data: bytes | bytearray) -> None:
        if self._transport is not None and not self._closed:
            self._transport.write(data)

    async def _drain(self) -> None:
        if self._writable is not None and not self._writable.done():
            await self._writable

    def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.close()

    def _fail(self, status: int) -> None:
        """A request that cannot be served: answer it here, then close."""
        self.pause()
        body = f'{{"reason": "{_reason(status).lower().replace(" ", "_")}"}}'.encode()
        head = _encode_head(status, None, [("Content-Type", "application/json"), ("Connection", "close")])
        head += f"Content-Length: {len(body)}\r\n\r\n".encode()
        if self._current is None or self._current.body.done:
            self.write(bytes(head) + body)
            self.close()
        else:  # a request is being answered: its answer is the last on this connection
            self._current.keep_alive = False
            self._current.body.finish(failed=True)
            self._queue.put_nowait(None)

    async def _serve(self) -> None:
        try:
            while True:
                request = await self._queue.get()
                if request is None:
                    return
                self._busy = True
                response = await self._answer(request)
                keep = await self._respond(request, response)
                self._busy = False
                self._last_activity = asyncio.get_running_loop().time()
                if not keep:
                    return
                if not request.body.done:
                    request.body.dropping = True
                    self.resume()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(request.body.wait_done(), DRAIN_SECONDS)
                    if not request.body.done or request.body.failed:
                        return
                self.resume()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.close()

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._handler(request)
        except Exception as exc:
            log.error("Failed to answer %s %s: %s", request.method, request.path[:200], type(exc).__name__)
            return Response(500, [("Content-Type", "application/json")], b'{"reason": "internal_error"}')

    async def _respond(self, request: Request, response: Response) -> bool:
        """Write the response; whether the connection may serve another request."""
        keep = request.keep_alive and not response.close and not self._closed
        headers = list(response.headers)
        named_length = any(n.lower() == "content-length" for n, _ in headers)
        bodyless = request.method == "HEAD" or response.status in _NO_BODY_STATUS or response.status < 200
        chunked = False
        if isinstance(response.body, bytes):
            if not bodyless or (request.method == "HEAD" and not named_length):
                headers.append(("Content-Length", str(len(response.body))))
        elif not named_length and not bodyless:
            if request.http11:
                headers.append(("Transfer-Encoding", "chunked"))
                chunked = True
            else:
                keep = False  # an HTTP/1.0 client reads until the connection closes
        if not keep:
            headers.append(("Connection", "close"))
        elif not request.http11:
            headers.append(("Connection", "keep-alive"))
        head = _encode_head(response.status, response.reason, headers)
        head += b"\r\n"
        if isinstance(response.body, bytes):
            self.write(head + response.body if not bodyless else head)
            await self._drain()
            return keep
        self.write(head)
        try:
            async for chunk in response.body:
                if bodyless or not chunk:
                    continue
                self.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await self._drain()
        finally:
            close = getattr(response.body, "aclose", None)
            if close is not None:
                await close()
        if chunked:
            self.write(b"0\r\n\r\n")
        await self._drain()
        return keep


class Server:
    """Connections to one listening socket, served by ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: set[_Connection] = set()
        self._server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int, backlog: int = 1024) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self.handler, self), host, port, backlog=backlog, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)


def json_response(status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> Response:
    return Response(status, [("Content-Type", "application/json; charset=utf-8"), *headers], body)


def text_response(status: int, text: str, content_type: str = "text/plain; charset=utf-8") -> Response:
    return Response(status, [("Content-Type", content_type)], text.encode())
