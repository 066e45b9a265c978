"""Baselines for the sidecar's HTTP benchmark: a bare handler that answers 200 to anything, on aiohttp
(the server the sidecar used before) or on the sidecar's own HTTP layer (asyncio + httptools).

python -m tests.apps.bare <port> [aiohttp|layer]
"""

from __future__ import annotations

import asyncio
import sys


def aiohttp_app(port: int) -> None:
    from aiohttp import web

    async def ok(_: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/auth", ok)  # the same static route the sidecar serves
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def layer_app(port: int) -> None:
    from tessera.sidecar import httpserver

    async def ok(_: httpserver.Request) -> httpserver.Response:
        return httpserver.Response(200)

    async def serve() -> None:
        server = httpserver.Server(ok)
        await server.start("127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(serve())


def main() -> None:
    port, kind = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "aiohttp")
    (layer_app if kind == "layer" else aiohttp_app)(port)


if __name__ == "__main__":
    main()
