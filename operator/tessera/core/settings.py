"""Operator settings: where it lives, what issuer it is, how it signs. Read once at start."""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping

from tessera import errors
from tessera.crypto import keys

DEFAULT_NAMESPACE = "tessera-system"
ISSUER_KEYS_SECRET = "tessera-issuer-keys"  # noqa: S105 (a Secret name)
ISSUER_JWKS_CONFIGMAP = "tessera-issuer-jwks"


@dataclasses.dataclass(frozen=True)
class Settings:
    namespace: str = DEFAULT_NAMESPACE
    issuer: str = f"https://tessera.{DEFAULT_NAMESPACE}.svc"
    default_audience: str = "tessera"
    algorithm: keys.Algorithm = "ES256"
    refresh_check_seconds: float = 30.0
    key_rotation: datetime.timedelta = datetime.timedelta(days=30)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        """Settings from ``TESSERA_*`` variables (the chart sets them); unset ones keep their defaults."""
        namespace = env.get("TESSERA_NAMESPACE", DEFAULT_NAMESPACE)
        algorithm = env.get("TESSERA_SIGNING_ALGORITHM", cls.algorithm)
        if algorithm not in keys.ALGORITHMS:
            raise errors.ConfigError(
                f"TESSERA_SIGNING_ALGORITHM={algorithm!r}; use one of {', '.join(keys.ALGORITHMS)}"
            )
        try:
            refresh = float(env.get("TESSERA_REFRESH_CHECK_SECONDS", cls.refresh_check_seconds))
            rotation = datetime.timedelta(hours=float(env.get("TESSERA_KEY_ROTATION_HOURS", 30 * 24)))
        except ValueError as exc:
            raise errors.ConfigError(f"a numeric TESSERA_* setting is not a number: {exc}") from exc
        return cls(
            namespace=namespace,
            issuer=env.get("TESSERA_ISSUER", f"https://tessera.{namespace}.svc"),
            default_audience=env.get("TESSERA_DEFAULT_AUDIENCE", cls.default_audience),
            algorithm=algorithm,
            refresh_check_seconds=refresh,
            key_rotation=rotation,
        )
