"""What the issuer service and its clients (the sidecar, ``tessera token``) must agree on, defined
once: the OAuth URNs of the token endpoint and the live bundle channel's address and parameters.

Standard library only (the sidecar imports it). The channel, served by ``tessera issuer``::

    GET /bundles/<namespace>?after=<sequence>&wait=<seconds>
    Authorization: Bearer <a Kubernetes service account token of a Pod in <namespace>>

answers 200 with the namespace's ``bundle.json`` (``ETag: "<sequence>"``) as soon as its sequence
is greater than ``after`` (at once when it already is), or 304 when ``wait`` seconds passed without
one. 401: the token is not accepted (TokenReview, audience :data:`KUBERNETES_AUDIENCE_HINT`); 403: it
is another namespace's; 404: the namespace has no trust bundle; 400: bad parameters; 503 with
``Retry-After``: the issuer is starting or shedding load.
"""

from __future__ import annotations

import urllib.parse

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 (a URN)
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 (a URN)
TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105 (a URN)
TOKEN_PATH = "/token"  # noqa: S105 (a path)

BUNDLES_PATH = "/bundles/"
MAX_WAIT_SECONDS = 60  # a longer wait is shortened to this
DEFAULT_WAIT_SECONDS = 30
KUBERNETES_AUDIENCE_HINT = "the issuer's kubernetesAudience (by default the issuer URL)"


def bundle_target(namespace: str, after: int, wait: int) -> str:
    """The request target of one long poll of ``namespace``'s bundle."""
    return f"{BUNDLES_PATH}{urllib.parse.quote(namespace, safe='')}?after={after}&wait={wait}"
