"""The ServiceAccount resource: a workload principal that receives short-lived signed tokens.

Its subject is ``urn:tessera:serviceaccount:<namespace>:<name>``. The operator writes a Secret
holding an access token (RFC 9068 style, ``typ: at+jwt``) for the workload to mount as a file.
"""

from __future__ import annotations

import datetime
from typing import Annotated

import pydantic

from tessera.api import meta

INFO = meta.KindInfo(
    kind="ServiceAccount",
    plural="serviceaccounts",
    singular="serviceaccount",
    short_names=("tsa", "tessera-sa"),
    description="A Tessera workload principal: the operator keeps a short-lived signed access token "
    "for it in a Secret that the workload mounts.",
    columns=(
        *meta.READY_COLUMNS,
        meta.PrinterColumn("Subject", ".status.subject", priority=1, description="Subject URN in its tokens"),
        meta.PrinterColumn("Secret", ".status.secretName", description="Secret holding the current token"),
        meta.PrinterColumn("Expires", ".status.tokenExpiresAt", description="When the token expires (UTC)"),
        meta.PrinterColumn("Disabled", ".spec.disabled", type="boolean", priority=1),
        meta.AGE_COLUMN,
    ),
)

MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 24 * 3600
DEFAULT_TTL_SECONDS = 15 * 60

Audience = Annotated[str, pydantic.Field(min_length=1, max_length=256)]
Cidr = Annotated[
    str,
    pydantic.Field(
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "isCIDR(self)", "message": "must be a CIDR range such as 10.0.0.0/8 or fd00::/8"}
            ]
        },
    ),
]


SUBJECT_PREFIX = "urn:tessera:serviceaccount:"


def subject_urn(namespace: str, name: str) -> str:
    """The subject a service account's tokens carry."""
    return f"{SUBJECT_PREFIX}{namespace}:{name}"


def parse_subject(subject: str) -> tuple[str, str] | None:
    """(namespace, name) of a service account subject URN; None for anything else."""
    if not subject.startswith(SUBJECT_PREFIX):
        return None
    namespace, sep, name = subject.removeprefix(SUBJECT_PREFIX).partition(":")
    return (namespace, name) if sep and namespace and name and ":" not in name else None


class TokenSettings(meta.Model):
    """How the operator mints this account's access tokens."""

    ttl_seconds: int = pydantic.Field(
        default=DEFAULT_TTL_SECONDS,
        ge=MIN_TTL_SECONDS,
        le=MAX_TTL_SECONDS,
        description="Lifetime of each token, 60 s to 24 h. The token is refreshed at 80% of it, or earlier so that the "
        "new one reaches mounted files (kubelet: about a minute) before the old expires; use 5 min or more "
        "for tokens read from a mounted Secret.",
    )
    audiences: list[Audience] = pydantic.Field(
        default_factory=list,
        max_length=8,
        description="The aud claim. Empty means the operator's default audience.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class KubernetesServiceAccountRef(meta.Model):
    """A Kubernetes ServiceAccount of the same namespace whose tokens may be exchanged for this account's."""

    name: str = pydantic.Field(
        min_length=1,
        max_length=253,
        pattern=meta.DNS1123_SUBDOMAIN,
        description="Name of the Kubernetes ServiceAccount (core/v1), in this account's namespace.",
    )


class ServiceAccountSpec(meta.Model):
    description: str | None = pydantic.Field(default=None, max_length=1024, description="What this account is for.")
    disabled: bool = pydantic.Field(
        default=False, description="A disabled account gets no token and its subject is revoked in every trust bundle."
    )
    token: TokenSettings = pydantic.Field(default_factory=TokenSettings, description="Token settings.")
    allowed_cidrs: list[Cidr] = pydantic.Field(
        default_factory=list,
        max_length=64,
        alias="allowedCIDRs",
        description="Source ranges its tokens may be used from; empty means anywhere.",
    )
    kubernetes_service_account: KubernetesServiceAccountRef | None = pydantic.Field(
        default=None,
        description="The Kubernetes ServiceAccount whose tokens (audience: the issuer's Kubernetes audience) the "
        "issuer exchanges for this account's tokens, after checking them with the TokenReview API.",
    )


class ServiceAccountStatus(meta.Model):
    conditions: list[meta.Condition] = pydantic.Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    subject: str | None = pydantic.Field(default=None, description="Subject URN in this account's tokens.")
    secret_name: str | None = pydantic.Field(default=None, description="Secret holding the current access token.")
    token_expires_at: datetime.datetime | None = None
    token_refresh_at: datetime.datetime | None = pydantic.Field(
        default=None, description="When the operator will replace the token."
    )
    key_id: str | None = pydantic.Field(default=None, description="kid of the issuer key that signed the token.")
    services: list[str] | None = pydantic.Field(
        default=None, description="The services summary: every service this account takes part in through its bindings."
    )
    bound_in: list[str] | None = pydantic.Field(
        default=None, description="The RoleBindings (namespace/name) naming this account."
    )


class ServiceAccount(meta.Resource):
    spec: ServiceAccountSpec = pydantic.Field(default_factory=ServiceAccountSpec)
    status: ServiceAccountStatus = pydantic.Field(default_factory=ServiceAccountStatus)

    @property
    def subject(self) -> str:
        return subject_urn(self.namespace, self.name)
