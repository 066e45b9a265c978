"""The baseline for the sidecar's HTTP benchmark: a bare aiohttp handler that answers 200 to anything.

python -m tests.apps.bare <port>
"""

from __future__ import annotations

import sys

from aiohttp import web


async def ok(_: web.Request) -> web.Response:
    return web.Response()


def main() -> None:
    app = web.Application()
    app.router.add_route("*", "/auth", ok)  # the same static route the sidecar serves
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
