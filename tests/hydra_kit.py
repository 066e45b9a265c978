"""Ory Hydra as a real identity provider for the issuer tests: started on loopback with TLS, an in-memory
database and JWT access tokens; a test login/consent app for one fixed user; a "browser" that walks the
authorization-code flow; clients created through Hydra's admin API.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.cookiejar
import json
import secrets
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tessera.envtest import hydra
from tests import harness, issuer_kit, waiting

EXCHANGE_AUDIENCE = "tessera-exchange"


@dataclasses.dataclass
class Hydra:
    issuer: str
    public: str
    admin: str
    login_port: int
    tls: issuer_kit.Tls
    processes: list[subprocess.Popen[bytes]]
    log_path: Path

    def _open(self, request: urllib.request.Request | str, opener: urllib.request.OpenerDirector | None = None) -> Any:
        handler = opener or urllib.request.build_opener(urllib.request.HTTPSHandler(context=self.tls.context()))
        with handler.open(request, timeout=30) as answer:
            return json.loads(answer.read())

    def create_client(self, **fields: Any) -> dict[str, Any]:
        body = {"access_token_strategy": "jwt", "token_endpoint_auth_method": "client_secret_post", **fields}
        request = urllib.request.Request(  # noqa: S310 (https to the test's own Hydra)
            f"{self.admin}/admin/clients", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        created: dict[str, Any] = self._open(request)
        return created

    def token(self, form: dict[str, str]) -> dict[str, Any]:
        request = urllib.request.Request(  # noqa: S310 (https to the test's own Hydra)
            f"{self.public}/oauth2/token", data=urllib.parse.urlencode(form).encode(), method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        answer: dict[str, Any] = self._open(request)
        return answer

    def client_credentials(self) -> str:
        client = self.create_client(grant_types=["client_credentials"], audience=[EXCHANGE_AUDIENCE])
        form = {"grant_type": "client_credentials", "audience": EXCHANGE_AUDIENCE}
        form.update(client_id=client["client_id"], client_secret=client["client_secret"])
        return str(self.token(form)["access_token"])

    def log_in(self) -> str:
        """The authorization-code flow as a browser walks it: Hydra -> login app -> Hydra -> consent app
        -> Hydra -> the callback with the code; then the code for an access token."""
        redirect = f"https://127.0.0.1:{self.login_port}/callback"
        client = self.create_client(
            grant_types=["authorization_code"], response_types=["code"], redirect_uris=[redirect],
            scope="openid", audience=[EXCHANGE_AUDIENCE],
        )  # fmt: skip
        browser = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
            urllib.request.HTTPSHandler(context=self.tls.context()),
        )
        query = {
            "client_id": client["client_id"], "response_type": "code", "redirect_uri": redirect,
            "scope": "openid", "state": secrets.token_hex(8), "audience": EXCHANGE_AUDIENCE,
        }  # fmt: skip
        landed = self._open(f"{self.public}/oauth2/auth?{urllib.parse.urlencode(query)}", browser)
        assert landed.get("state") == query["state"], landed
        form = {"grant_type": "authorization_code", "code": landed["code"], "redirect_uri": redirect}
        form.update(client_id=client["client_id"], client_secret=client["client_secret"])
        return str(self.token(form)["access_token"])

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def config(folder: Path, public: int, admin: int, login: int, tls: issuer_kit.Tls) -> Path:
    path = folder / "hydra.yaml"
    document = {
        "dsn": "memory",
        "serve": {
            "public": {"host": "127.0.0.1", "port": public},
            "admin": {"host": "127.0.0.1", "port": admin},
            "tls": {"enabled": True, "cert": {"path": str(tls.cert)}, "key": {"path": str(tls.key)}},
        },
        "urls": {
            "self": {"issuer": f"https://127.0.0.1:{public}"},
            "login": f"https://127.0.0.1:{login}/login",
            "consent": f"https://127.0.0.1:{login}/consent",
        },
        "secrets": {"system": [secrets.token_hex(32)]},
        "strategies": {"access_token": "jwt"},
        "log": {"level": "warn"},
    }
    path.write_text(yaml.safe_dump(document))
    return path


@contextlib.contextmanager
def running(folder: Path, user: str) -> Iterator[Hydra]:
    """Hydra (``serve all``, anonymous usage statistics off: nothing leaves the machine) and the login app."""
    folder.mkdir(parents=True, exist_ok=True)
    tls = issuer_kit.tls_files(folder / "tls", "hydra")
    public, admin, login = harness.free_port(), harness.free_port(), harness.free_port()
    log_path = folder / "hydra.log"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with log_path.open("wb") as log:
            cmd = [str(hydra.ensure()), "serve", "all", "--config", str(config(folder, public, admin, login, tls))]
            cmd += ["--sqa-opt-out"]
            processes.append(
                subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env={"SQA_OPT_OUT": "true", "PATH": "/usr/bin:/bin"}
                )
            )
            login_cmd = [
                sys.executable,
                "-m",
                "tests.apps.login",
                str(login),
                f"https://127.0.0.1:{admin}",
                str(tls.ca),
                user,
            ]
            login_cmd += [str(tls.cert), str(tls.key)]
            processes.append(subprocess.Popen(login_cmd, stdout=log, stderr=subprocess.STDOUT))
        found = Hydra(
            f"https://127.0.0.1:{public}",
            f"https://127.0.0.1:{public}",
            f"https://127.0.0.1:{admin}",
            login,
            tls,
            processes,
            log_path,
        )

        def up() -> bool:
            for process in processes:
                if process.poll() is not None:
                    raise AssertionError(f"Hydra or the login app exited:\n{found.logs()[-3000:]}")
            with contextlib.suppress(OSError, ValueError):
                return bool(found._open(f"{found.admin}/health/ready"))
            return False

        waiting.until(up, timeout=60, what="Hydra's /health/ready")
        waiting.until(lambda: harness_port_open(login), timeout=30, what="the login app")
        yield found
    finally:
        for process in processes:
            harness.stop_process(process)


def harness_port_open(port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False
