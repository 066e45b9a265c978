"""The sidecar's defaults, one definition each: its flags, :class:`~tessera.sidecar.server.Config` and
the verifier's :class:`~tessera.sidecar.verify.Policy` read them (this module imports nothing, so the
command line can use it without loading the sidecar)."""

from __future__ import annotations

BUNDLE_DIR = "/var/run/tessera/bundle"
AUDIENCE = "tessera"
RULES_FILE = "/etc/tessera/rules.yaml"
LISTEN_HOST, LISTEN_PORT = "127.0.0.1", 8181
LEEWAY_SECONDS = 60  # never more than the operator's clock leeway (TESSERA_CLOCK_LEEWAY_SECONDS)
MAX_TOKEN_BYTES = 8192
MAX_LIFETIME_SECONDS = 86400  # exp - iat
RELOAD_SECONDS = 2.0
CHANNEL_WAIT_SECONDS = 30
