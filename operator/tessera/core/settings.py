"""Operator settings: where it lives, what issuer it is, how it signs and rotates. Read once at start."""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping

from tessera import errors
from tessera.api import meta
from tessera.api import serviceaccount as sa_api
from tessera.crypto import keys

DEFAULT_NAMESPACE = "tessera-system"
ISSUER_KEYS_SECRET = "tessera-issuer-keys"  # noqa: S105 (a Secret name)
ISSUER_JWKS_CONFIGMAP = "tessera-issuer-jwks"
REVOCATIONS_CONFIGMAP = "tessera-revocations"
TRUST_BUNDLE_CONFIGMAP = "tessera-trust-bundle"
TRUST_BUNDLE_LABEL = f"{meta.GROUP}/trust-bundle"  # on a Namespace: "enabled" opts it in
TRUST_BUNDLE_LABEL_VALUE = "enabled"

# The API server refuses ConfigMaps whose data exceed 1 MiB; keep room for metadata.
BUNDLE_LIMIT_BYTES = 1_000_000
MAX_TOKEN_TTL_SECONDS = sa_api.MAX_TTL_SECONDS  # what a ServiceAccount may ask for is what the operator allows
# The grants claim's compact JSON stays under this, so a token fits well inside common 8 KiB header
# limits (nginx's large_client_header_buffers, Go's and Envoy's defaults are larger): base64url
# makes 2 KiB of JSON about 2.7 KiB, plus about 330 bytes for the rest of an ES256 token.
TOKEN_GRANTS_MAX_BYTES = 2048
TOKEN_GRANTS_LIMIT_BYTES = 6144
# A token naming an unknown kid makes the issuer fetch its identity provider's keys at most this often.
PROVIDER_REFETCH_SECONDS = 60


@dataclasses.dataclass(frozen=True)
class Settings:
    namespace: str = DEFAULT_NAMESPACE
    issuer: str = f"https://tessera.{DEFAULT_NAMESPACE}.svc"
    default_audience: str = "tessera"
    algorithm: keys.Algorithm = "ES256"
    refresh_check_seconds: float = 30.0
    # How long a new token may take to reach the workload's mounted file: kubelet rewrites a mounted
    # Secret at its next sync (``syncFrequency``, 1 min by default). Tokens are refreshed at least this
    # long plus one refresh check before they expire (or at half their lifetime, if shorter).
    token_delivery_seconds: float = 90.0
    # A new issuer key is created every ``key_rotation`` (zero: never), published ``key_publish_lead``
    # before it signs (kubelet refreshes mounted ConfigMaps about once a minute), and the old one is
    # withdrawn once every token it signed has expired (``max_token_ttl`` after the new key took over).
    key_rotation: datetime.timedelta = datetime.timedelta(days=30)
    key_publish_lead: datetime.timedelta = datetime.timedelta(minutes=5)
    max_token_ttl: datetime.timedelta = datetime.timedelta(seconds=MAX_TOKEN_TTL_SECONDS)
    bundle_max_bytes: int = BUNDLE_LIMIT_BYTES
    # How far past ``exp`` verifiers may accept a token (clock skew); revocations and retired keys
    # outlive the tokens they cover by this much. Sidecars must use a leeway no larger.
    clock_leeway: datetime.timedelta = datetime.timedelta(seconds=60)
    # Over this many bytes the grants claim is left out of a token (0: never put in tokens).
    token_grants_max_bytes: int = TOKEN_GRANTS_MAX_BYTES
    # The audience a Kubernetes service account token must carry to be exchanged at the issuer service
    # (``kubectl create token --audience``, a projected token's ``audience``); empty: the issuer URL.
    kubernetes_audience: str = ""
    provider_refetch: datetime.timedelta = datetime.timedelta(seconds=PROVIDER_REFETCH_SECONDS)
    # The issuer service's CA certificate (PEM file); when set, every trust bundle ConfigMap carries it
    # beside bundle.json, so sidecars can reach the issuer's live bundle channel and token endpoint.
    issuer_ca_file: str = ""

    def __post_init__(self) -> None:
        if not self.kubernetes_audience:
            object.__setattr__(self, "kubernetes_audience", self.issuer)

    @property
    def refresh_margin_seconds(self) -> float:
        """What a refresh must leave of the old token's life: the delivery time plus a check's lateness."""
        return self.token_delivery_seconds + self.refresh_check_seconds

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Settings from ``TESSERA_*`` variables (the chart sets them); unset ones keep their defaults."""
        namespace = env.get("TESSERA_NAMESPACE", DEFAULT_NAMESPACE)
        algorithm = env.get("TESSERA_SIGNING_ALGORITHM", cls.algorithm)
        if algorithm not in keys.ALGORITHMS:
            raise errors.ConfigError(
                f"TESSERA_SIGNING_ALGORITHM={algorithm!r}; use one of {', '.join(keys.ALGORITHMS)}"
            )

        # Each default is the field's own (one definition); a variable only overrides it.
        def seconds(name: str, default: datetime.timedelta) -> datetime.timedelta:
            found = env.get(name)
            return default if found is None else datetime.timedelta(seconds=float(found))

        try:
            refresh = float(env.get("TESSERA_REFRESH_CHECK_SECONDS", cls.refresh_check_seconds))
            delivery = float(env.get("TESSERA_TOKEN_DELIVERY_SECONDS", cls.token_delivery_seconds))
            hours = env.get("TESSERA_KEY_ROTATION_HOURS")
            rotation = cls.key_rotation if hours is None else datetime.timedelta(hours=float(hours))
            lead = seconds("TESSERA_KEY_PUBLISH_LEAD_SECONDS", cls.key_publish_lead)
            max_ttl = seconds("TESSERA_MAX_TOKEN_TTL_SECONDS", cls.max_token_ttl)
            bundle_max = int(env.get("TESSERA_BUNDLE_MAX_BYTES", cls.bundle_max_bytes))
            leeway = seconds("TESSERA_CLOCK_LEEWAY_SECONDS", cls.clock_leeway)
            grants_max = int(env.get("TESSERA_TOKEN_GRANTS_MAX_BYTES", cls.token_grants_max_bytes))
            refetch = seconds("TESSERA_PROVIDER_REFETCH_SECONDS", cls.provider_refetch)
        except ValueError as exc:
            raise errors.ConfigError(f"a numeric TESSERA_* setting is not a number: {exc}") from exc
        if delivery < 0:
            raise errors.ConfigError("TESSERA_TOKEN_DELIVERY_SECONDS must not be negative")
        if not 60 <= max_ttl.total_seconds() <= MAX_TOKEN_TTL_SECONDS:
            raise errors.ConfigError(f"TESSERA_MAX_TOKEN_TTL_SECONDS must be between 60 and {MAX_TOKEN_TTL_SECONDS}")
        if not 0 < bundle_max <= BUNDLE_LIMIT_BYTES:
            raise errors.ConfigError(f"TESSERA_BUNDLE_MAX_BYTES must be between 1 and {BUNDLE_LIMIT_BYTES}")
        if refetch.total_seconds() < 1:
            raise errors.ConfigError("TESSERA_PROVIDER_REFETCH_SECONDS must be at least 1")
        if not 0 <= grants_max <= TOKEN_GRANTS_LIMIT_BYTES:
            raise errors.ConfigError(f"TESSERA_TOKEN_GRANTS_MAX_BYTES must be between 0 and {TOKEN_GRANTS_LIMIT_BYTES}")
        return cls(
            namespace=namespace,
            issuer=env.get("TESSERA_ISSUER", f"https://tessera.{namespace}.svc"),
            default_audience=env.get("TESSERA_DEFAULT_AUDIENCE", cls.default_audience),
            algorithm=algorithm,
            refresh_check_seconds=refresh,
            token_delivery_seconds=delivery,
            key_rotation=rotation,
            key_publish_lead=lead,
            max_token_ttl=max_ttl,
            bundle_max_bytes=bundle_max,
            clock_leeway=leeway,
            token_grants_max_bytes=grants_max,
            kubernetes_audience=env.get("TESSERA_KUBERNETES_AUDIENCE", cls.kubernetes_audience),
            provider_refetch=refetch,
            issuer_ca_file=env.get("TESSERA_ISSUER_CA_FILE", cls.issuer_ca_file),
        )
