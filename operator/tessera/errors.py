"""Tessera's exceptions, one tree so callers can catch what they mean.

    TesseraError
    +-- KeyMaterialError      key material could not be parsed, is too weak, or has the wrong type
    +-- TokenError            a token could not be minted
    +-- KubeError             the API server refused or failed (tessera.kube re-raises ApiException)
    |   +-- NotFound
    |   +-- Conflict          409: already exists, or a stale resourceVersion
    |   +-- Forbidden
    |   +-- Invalid           422: the API server rejected the object
    |   +-- Unavailable       no answer: connection refused or reset, timed out
    +-- ConfigError           operator or sidecar settings are unusable
    +-- BundleError           a trust bundle is unreadable or inconsistent (readers keep the last good one)

Messages never carry key material or tokens.
"""

from __future__ import annotations


class TesseraError(Exception):
    """Base of every error Tessera raises on purpose."""


class KeyMaterialError(TesseraError):
    """Key material could not be parsed, is too weak, or has an unsupported type."""


class TokenError(TesseraError):
    """A token could not be minted."""


class ConfigError(TesseraError):
    """Settings are unusable."""


class BundleError(TesseraError):
    """A trust bundle is unreadable or inconsistent; a reader keeps the last good one."""


class KubeError(TesseraError):
    """The API server refused or failed a request."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    """404."""


class Conflict(KubeError):
    """409: the object exists already, or was changed since it was read."""


class Forbidden(KubeError):
    """403: RBAC does not allow the request."""


class Invalid(KubeError):
    """422: the API server rejected the object as invalid."""


class Unavailable(KubeError):
    """The API server did not answer (connection refused or reset, a timeout): retry once it does."""
