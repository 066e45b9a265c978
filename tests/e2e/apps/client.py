"""A workload that calls the ledger with the token kubelet mounts, re-reading the file for every call.

    client.py once URL [--token-file F] [--method M]   one call; prints a JSON line
    client.py loop URL --token-file F [--interval S]    a call every S seconds, a JSON line each
    client.py loop URL --token-file F --hold            the same, with the token read once and kept
                                                        (as a leaked or cached copy would be)
    client.py loop URL --exchange TOKEN_URL --token-file F --ca C --audience A
                                                        exchanges the (Kubernetes) token in F at the
                                                        issuer for a Tessera token before each call

Each line: the time, status, the sidecar's reason, and facts of the token sent (its kid, exp, iat and
a digest, never the token): enough for the tests to tell a refresh, a key rotation or a revocation.
When the cluster DNS cannot answer a lookup just now (EAI_AGAIN), the call waits until it answers again
(at most DNS_WAIT seconds) and is made once more; its line says how long it waited (``dns_waited_s``):
DNS is not what these tests are about, but they report it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from email.message import Message


def token_facts(token: str) -> dict[str, object]:
    def part(index: int) -> dict[str, object]:
        segment = token.split(".")[index]
        decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        return decoded

    try:
        header, claims = part(0), part(1)
    except (ValueError, IndexError):
        return {"token": "unreadable"}
    digest = hashlib.sha256(token.encode()).hexdigest()[:12]
    return {"kid": header.get("kid"), "exp": claims.get("exp"), "iat": claims.get("iat"), "digest": digest}


def read_token(token_file: str | None) -> str | None:
    if not token_file:
        return None
    with open(token_file) as handle:
        return handle.read().strip()


def exchange(endpoint: str, subject_token: str, ca_file: str, audience: str) -> str:
    """RFC 8693 token exchange at the issuer's token endpoint (verified against its CA)."""
    if not endpoint.startswith("https://"):
        raise SystemExit(f"not an https URL: {endpoint}")
    form = urllib.parse.urlencode({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject_token,
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "audience": audience,
    }).encode()  # fmt: skip
    request = urllib.request.Request(endpoint, data=form, method="POST")  # noqa: S310 (https only, checked above)
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    context = ssl.create_default_context(cafile=ca_file)
    with urllib.request.urlopen(request, timeout=5, context=context) as response:  # noqa: S310
        token: str = json.load(response)["access_token"]
    return token


DNS_WAIT = 15.0  # the longest wait for the cluster DNS to answer again (glibc's own try: 2 x 5 s)
DNS_POLL = 0.1  # between lookups while waiting (a refused lookup can come back at once)


def lookup_failed_for_now(exc: OSError) -> bool:
    """The cluster DNS could not answer just now (EAI_AGAIN): the DNS server's failure, not the ledger's."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, socket.gaierror) and reason.errno == socket.EAI_AGAIN


def wait_for_dns(host: str, timeout: float = DNS_WAIT) -> float | None:
    """Wait until ``host`` resolves again: the seconds waited, or None if it did not within ``timeout``
    (or failed for good)."""
    began = time.monotonic()
    while True:
        try:
            socket.getaddrinfo(host, None)
            return round(time.monotonic() - began, 2)
        except socket.gaierror as exc:
            if exc.errno != socket.EAI_AGAIN or time.monotonic() - began > timeout:
                return None
        time.sleep(DNS_POLL)


def send(request: urllib.request.Request) -> tuple[int, Message, bytes]:
    """The status, headers and body of ``request``'s answer, a refusal included."""
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 (http only, checked by call)
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def call(url: str, token: str | None, method: str) -> dict[str, object]:
    if not url.startswith("http://"):
        raise SystemExit(f"not an http URL: {url}")
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)  # noqa: S310
    facts: dict[str, object] = {}
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
        facts = token_facts(token) if token else {"token": "empty"}
    started = time.time()
    try:
        status, headers, body = send(request)
    except OSError as exc:
        waited = wait_for_dns(request.host) if lookup_failed_for_now(exc) else None
        if waited is None:
            return {"t": started, "status": 0, "error": str(exc), **facts}
        facts["dns_waited_s"] = waited
        try:  # once more, now that the cluster DNS answers again
            status, headers, body = send(request)
        except OSError as again:
            return {"t": started, "status": 0, "error": str(again), **facts}
    line: dict[str, object] = {"t": started, "status": status, "reason": headers.get("X-Tessera-Reason"), **facts}
    try:
        line["body"] = json.loads(body)
    except ValueError:
        line["body"] = body.decode(errors="replace")[:200]
    return line


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["once", "loop"])
    parser.add_argument("url")
    parser.add_argument("--token-file")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--exchange", help="the issuer's token endpoint")
    parser.add_argument("--ca", help="the issuer's CA certificate")
    parser.add_argument("--audience", default="ledger")
    args = parser.parse_args(argv)
    held = read_token(args.token_file) if args.hold else None
    while True:
        token = held if args.hold else read_token(args.token_file)
        if args.exchange and token:
            try:
                token = exchange(args.exchange, token, args.ca, args.audience)
            except (OSError, ValueError, KeyError) as exc:
                print(json.dumps({"t": time.time(), "status": 0, "error": f"exchange: {exc}"}), flush=True)
                time.sleep(args.interval)
                continue
        print(json.dumps(call(args.url, token, args.method)), flush=True)
        if args.mode == "once":
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
