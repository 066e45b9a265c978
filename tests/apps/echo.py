"""A real upstream app for proxy tests: echoes what it received (method, path, headers, body digest,
the client's port, so kept-alive connections show), and serves large streamed bodies.

    python -m tests.apps.echo <port>
"""

from __future__ import annotations

import hashlib
import sys

from aiohttp import web


async def echo(request: web.Request) -> web.StreamResponse:
    if "/big/" in request.path:
        size = int(request.path.rsplit("/", 1)[1])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        chunk = b"t" * 65536
        for _ in range(size // len(chunk)):
            await response.write(chunk)
        await response.write(b"t" * (size % len(chunk)))
        await response.write_eof()
        return response
    digest, size = hashlib.sha256(), 0
    async for chunk in request.content.iter_chunked(65536):
        digest.update(chunk)
        size += len(chunk)
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return web.json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "headers": {k: v for k, v in request.headers.items()},
            "subject": request.headers.getall("X-Tessera-Subject", []),
            "authorization": request.headers.getall("Authorization", []),
            "bodyBytes": size,
            "bodySha256": digest.hexdigest(),
            "clientPort": peer[1] if peer else None,
        },
        headers={"X-App": "echo"},
    )


def main() -> None:
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", echo)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
