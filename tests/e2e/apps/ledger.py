"""The example's ledger app: listens on $LISTEN (127.0.0.1:8080, behind the sidecar) and answers every
request with what it was told about the caller: the identity headers the sidecar passed on."""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Ledger(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        identity = {k: v for k, v in self.headers.items() if k.lower().startswith("x-tessera-")}
        body = json.dumps({"app": "ledger", "method": self.command, "path": self.path, "identity": identity}).encode()
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
