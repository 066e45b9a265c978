"""The example's ledger app: listens on $LISTEN (127.0.0.1:8080, behind the sidecar) and answers every
request with what it was told about the caller: the identity headers the sidecar passed on, and facts
of the token the caller presented (its kid, iat, exp and a digest; never the token), so a test can
tell which token an app that never reads one was calling with."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def token_facts(authorization: str | None) -> dict[str, object] | None:
    if not authorization or not authorization.startswith("Bearer "):
        return None
    token = authorization.removeprefix("Bearer ").strip()
    try:
        head, body = (json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in token.split(".")[:2])
    except ValueError:
        return {"token": "unreadable"}
    digest = hashlib.sha256(token.encode()).hexdigest()[:12]
    return {"kid": head.get("kid"), "iat": body.get("iat"), "exp": body.get("exp"), "digest": digest}


class Ledger(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        identity = {k: v for k, v in self.headers.items() if k.lower().startswith("x-tessera-")}
        answer: dict[str, object] = {"app": "ledger", "method": self.command, "path": self.path, "identity": identity}
        answer["token"] = token_facts(self.headers.get("Authorization"))
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = answer

    def log_message(self, format: str, *args: object) -> None:  # quiet: the sidecar logs decisions
        pass


def main() -> None:
    host, port = os.environ.get("LISTEN", "127.0.0.1:8080").rsplit(":", 1)
    ThreadingHTTPServer((host, int(port)), Ledger).serve_forever()


if __name__ == "__main__":
    main()
