"""The IdentityProvider resource (cluster-scoped): an external OpenID Connect issuer whose users may
exchange their tokens at Tessera's issuer for Tessera access tokens (RFC 8693).

A user is bound to the provider that vouches for them: their Tessera subject is
``user:<issuer>#<subject>``, the same principal key RoleBinding members of kind ``user`` have, so the
same subject at two providers is two users. The provider's keys come from its discovery document
(``<issuer>/.well-known/openid-configuration`` -> ``jwks_uri``, the default), an explicit ``jwksURI``,
or inline ``jwks``; Tessera fetches and refreshes them, never once per request.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

import pydantic

from tessera.api import meta, rolebinding, serviceaccountkey

INFO = meta.KindInfo(
    kind="IdentityProvider",
    plural="identityproviders",
    singular="identityprovider",
    short_names=("tidp", "tessera-idp"),
    description="An external OpenID Connect identity provider whose users may exchange their tokens for Tessera "
    "access tokens at Tessera's issuer.",
    columns=(
        *meta.READY_COLUMNS,
        meta.PrinterColumn("Issuer", ".spec.issuer", description="The provider's issuer URL"),
        meta.PrinterColumn("Keys", ".status.keyCount", type="integer", description="Signing keys known"),
        meta.PrinterColumn("Fetched", ".status.lastFetchTime", description="When its keys were last fetched (UTC)"),
        meta.AGE_COLUMN,
    ),
    namespaced=False,
)

ProviderAlgorithm = Literal["RS256", "ES256", "EdDSA"]
DEFAULT_ALGORITHMS: tuple[ProviderAlgorithm, ...] = ("RS256", "ES256")
MIN_REFRESH_SECONDS = 60
DEFAULT_REFRESH_SECONDS = 3600
MAX_REFRESH_SECONDS = 7 * 24 * 3600
MAX_INLINE_KEYS = 16
MAX_CA_BUNDLE_BYTES = 65536
DEFAULT_TOKEN_TTL_SECONDS = 900

Audience = Annotated[str, pydantic.Field(min_length=1, max_length=256)]


class InlineJwks(meta.Model):
    keys: list[serviceaccountkey.Jwk] = pydantic.Field(
        min_length=1, max_length=MAX_INLINE_KEYS, description="Public JWKs (RFC 7517), each with its kid."
    )


class IdentityProviderSpec(meta.Model):
    model_config = pydantic.ConfigDict(
        json_schema_extra=meta.rules(
            ("!(has(self.jwksURI) && has(self.jwks))", "give jwksURI or jwks, not both (neither: use discovery)"),
        )
    )

    issuer: str = pydantic.Field(
        max_length=512,
        pattern=rolebinding.HTTPS_URL,
        description="The provider's issuer URL (the iss of its tokens, compared exactly), https.",
    )
    jwks_uri: str | None = pydantic.Field(
        default=None,
        alias="jwksURI",
        max_length=1024,
        pattern=rolebinding.HTTPS_URL,
        description="Where its keys are (https). Empty: read jwks_uri from the issuer's discovery document.",
    )
    jwks: InlineJwks | None = pydantic.Field(
        default=None, description="The provider's public keys inline, instead of fetching them."
    )
    audiences: list[Audience] = pydantic.Field(
        min_length=1,
        max_length=16,
        description="A subject token must carry at least one of these audiences (aud) to be exchanged.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    algorithms: list[ProviderAlgorithm] = pydantic.Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS),
        min_length=1,
        max_length=3,
        description="JWS algorithms its tokens may be signed with (each key is used only with the one its type signs).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    subject_claim: str = pydantic.Field(
        default="sub",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="The claim naming the user (a string); default sub.",
    )
    token_audiences: list[Audience] = pydantic.Field(
        default_factory=list,
        max_length=8,
        description="Audiences its users' Tessera tokens may ask for. Empty: the issuer's default audience only.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    token_ttl_seconds: int = pydantic.Field(
        default=DEFAULT_TOKEN_TTL_SECONDS,
        alias="tokenTTLSeconds",
        ge=60,
        le=24 * 3600,
        description="Lifetime of its users' Tessera tokens (capped by the issuer's maximum and by the subject "
        "token's own expiry).",
    )
    refresh_seconds: int = pydantic.Field(
        default=DEFAULT_REFRESH_SECONDS,
        ge=MIN_REFRESH_SECONDS,
        le=MAX_REFRESH_SECONDS,
        description="How often its keys are fetched again. A token with an unknown kid makes the issuer fetch "
        "sooner, at most once a minute (TESSERA_PROVIDER_REFETCH_SECONDS).",
    )
    ca_bundle: str | None = pydantic.Field(
        default=None,
        max_length=MAX_CA_BUNDLE_BYTES,
        description="PEM certificates to trust for the provider's TLS, instead of the system's.",
    )
    disabled: bool = pydantic.Field(default=False, description="A disabled provider's tokens are not exchanged.")


class IdentityProviderStatus(meta.Model):
    conditions: list[meta.Condition] = pydantic.Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    jwks_uri: str | None = pydantic.Field(default=None, alias="jwksURI", description="Where the keys were fetched.")
    key_count: int | None = pydantic.Field(default=None, description="Usable signing keys found.")
    key_ids: list[str] | None = pydantic.Field(default=None, description="Their kids.")
    last_fetch_time: datetime.datetime | None = pydantic.Field(
        default=None, description="When the keys were last fetched successfully."
    )


class IdentityProvider(meta.Resource):
    spec: IdentityProviderSpec
    status: IdentityProviderStatus = pydantic.Field(default_factory=IdentityProviderStatus)
