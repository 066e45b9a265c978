"""A login and consent app for Ory Hydra in tests: it accepts one fixed user without a password and
grants every scope and audience the client asked for. ``/callback`` shows the authorization code.

    python -m tests.apps.login <port> <hydra admin URL> <CA file> <user> <cert file> <key file>

It serves HTTPS (Hydra refuses plain-HTTP login and consent URLs outside its development mode).
"""

from __future__ import annotations

import ssl
import sys

from aiohttp import ClientSession, web

ADMIN = web.AppKey("admin", str)
CONTEXT = web.AppKey("context", ssl.SSLContext)
USER = web.AppKey("user", str)


async def _accept(request: web.Request, flow: str, body: dict[str, object]) -> web.Response:
    """Read Hydra's login or consent request, accept it, and send the browser on."""
    challenge = request.query[f"{flow}_challenge"]
    admin, context = request.app[ADMIN], request.app[CONTEXT]
    base = f"{admin}/admin/oauth2/auth/requests/{flow}"
    async with ClientSession() as session:
        async with session.get(base, params={f"{flow}_challenge": challenge}, ssl=context) as got:
            asked = await got.json()
        if flow == "consent":
            body = {
                "grant_scope": asked.get("requested_scope") or [],
                "grant_access_token_audience": asked.get("requested_access_token_audience") or [],
                "remember": False,
            }
        async with session.put(
            f"{base}/accept", params={f"{flow}_challenge": challenge}, json=body, ssl=context
        ) as put:
            accepted = await put.json()
    raise web.HTTPFound(accepted["redirect_to"])


async def login(request: web.Request) -> web.Response:
    return await _accept(request, "login", {"subject": request.app[USER], "remember": False})


async def consent(request: web.Request) -> web.Response:
    return await _accept(request, "consent", {})


async def callback(request: web.Request) -> web.Response:
    return web.json_response(dict(request.query))


def main() -> None:
    port, admin, ca_file, user, cert, key = sys.argv[1:7]
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(cert, key)
    app = web.Application()
    app[ADMIN], app[CONTEXT], app[USER] = admin, ssl.create_default_context(cafile=ca_file), user
    app.router.add_get("/login", login)
    app.router.add_get("/consent", consent)
    app.router.add_get("/callback", callback)
    web.run_app(app, host="127.0.0.1", port=int(port), print=None, ssl_context=serving)


if __name__ == "__main__":
    main()
