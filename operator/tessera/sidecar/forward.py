"""Passing one request on to an upstream and its answer back, streaming both bodies: the reverse
proxy (caller -> app) and the egress mode (app -> a configured upstream) share it.

Hop-by-hop headers (RFC 9110 section 7.6.1, and any named in ``Connection``) never cross; ``Host``
is the upstream's; the caller decides which other headers go (see ``headers`` of :func:`relay`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from tessera.sidecar import httpclient, httpserver

log = logging.getLogger("tessera.sidecar")

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
     "trailer", "transfer-encoding", "upgrade", "expect"}
)  # fmt: skip
STREAM_CHUNK = 65536


def hop_by_hop(headers: list[tuple[str, str]]) -> frozenset[str]:
    """The lower-case names that must not be passed on: the standard ones and any ``Connection`` names."""
    named = {
        token.strip().lower() for name, value in headers if name.lower() == "connection" for token in value.split(",")
    }
    return HOP_BY_HOP | named


def _length(request: httpserver.Request) -> int | None:
    value = request.get("content-length")
    if value is None or request.get("transfer-encoding") is not None:
        return None
    return int(value)  # llhttp accepted it: digits only


async def _relayed(answer: httpclient.Answer) -> AsyncIterator[bytes]:
    async for chunk in answer.chunks():
        yield chunk


async def relay(
    pool: httpclient.Pool, request: httpserver.Request, headers: list[tuple[str, str]]
) -> httpserver.Response:
    """Send ``request`` with ``headers`` (already chosen by the caller) to the pool's origin; the
    upstream's answer streams back. :class:`httpclient.UpstreamError` when it cannot be reached."""
    body = request.body.chunks() if request.has_body else None
    answer = await pool.request(
        request.method, request.target, headers, body, length=_length(request) if body is not None else None
    )
    skip = hop_by_hop(answer.headers)
    passed = [(name, value) for name, value in answer.headers if name.lower() not in skip]
    if request.method == "HEAD" or answer.status in (204, 304):
        answer.close() if request.method == "HEAD" else await answer.read()
        return httpserver.Response(answer.status, passed, b"", answer.reason)
    return httpserver.Response(answer.status, passed, _relayed(answer), answer.reason)


def unavailable(what: str, exc: BaseException) -> httpserver.Response:
    log.warning("%s did not answer: %s", what, exc)
    return httpserver.json_response(502, b'{"reason": "upstream_unavailable"}')
