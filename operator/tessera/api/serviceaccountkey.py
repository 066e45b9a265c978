"""The ServiceAccountKey resource: a key pair a Tessera ServiceAccount's workload signs its own JWTs with.

Either the user supplies the public key (``spec.publicKey``, recommended: the private key never
reaches the cluster; ``tessera keygen`` makes one), or the operator generates the pair and keeps
the private key in a Secret (``spec.generate``). The key is registered under the account's subject
and identified by its RFC 7638 thumbprint. Key material is immutable: rotate by creating a new key.

The CEL rules on ``publicKey`` and ``generate`` sit on the fields, not on their models, because a
field's rules replace its model's rules in the generated schema.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic

from tessera.api import meta, serviceaccount

INFO = meta.KindInfo(
    kind="ServiceAccountKey",
    plural="serviceaccountkeys",
    singular="serviceaccountkey",
    short_names=("tsakey", "tessera-sakey"),
    description="A key of a Tessera ServiceAccount: the account's workload signs its own JWTs with the private "
    "key, and verifiers trust them through the public key registered here.",
    columns=(
        *meta.READY_COLUMNS,
        meta.PrinterColumn("Account", ".spec.serviceAccountName", description="The ServiceAccount the key belongs to"),
        meta.PrinterColumn("Key ID", ".status.keyId", description="RFC 7638 thumbprint; the kid in the JWT header"),
        meta.PrinterColumn("Algorithm", ".status.algorithm", description="The JWS alg the key signs with"),
        meta.PrinterColumn("Expires", ".status.expiresAt", description="When the key stops being trusted (UTC)"),
        meta.AGE_COLUMN,
    ),
)

# A DNS-1123 subdomain, as Kubernetes object names are.

PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")
# base64url of an 8192-bit RSA modulus is 1366 characters; everything else is shorter.
_JWK_MEMBER_MAX = 2048


def _member(description: str) -> Any:
    return pydantic.Field(default=None, max_length=_JWK_MEMBER_MAX, description=description)


class Jwk(meta.Model):
    """A public JWK (RFC 7517). The private members are declared only so that they are refused."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=meta.rules(
            (
                " && ".join(f"!has(self.{m})" for m in PRIVATE_JWK_MEMBERS),
                "the JWK holds private key members; supply only the public key",
            )
        )
    )

    kty: Literal["EC", "OKP", "RSA"] | None = pydantic.Field(default=None, description="Key type.")
    crv: str | None = pydantic.Field(default=None, max_length=16, description="Curve: P-256 (EC) or Ed25519 (OKP).")
    x: str | None = _member("EC or OKP public x coordinate.")
    y: str | None = _member("EC public y coordinate.")
    n: str | None = _member("RSA modulus.")
    e: str | None = _member("RSA public exponent.")
    kid: str | None = pydantic.Field(
        default=None,
        max_length=128,
        description="Key id. In a ServiceAccountKey, when given, it must be the RFC 7638 thumbprint.",
    )
    alg: str | None = pydantic.Field(
        default=None, max_length=16, description="When given, the algorithm of the key type: ES256, EdDSA or RS256."
    )
    use: str | None = pydantic.Field(default=None, max_length=16, description="When given, sig.")
    d: str | None = _member("Private; refused.")
    p: str | None = _member("Private; refused.")
    q: str | None = _member("Private; refused.")
    dp: str | None = _member("Private; refused.")
    dq: str | None = _member("Private; refused.")
    qi: str | None = _member("Private; refused.")


class PublicKeySpec(meta.Model):
    """A public key in exactly one form."""

    pem: str | None = pydantic.Field(
        default=None, max_length=16384, description="PEM SubjectPublicKeyInfo (-----BEGIN PUBLIC KEY-----)."
    )
    jwk: Jwk | None = pydantic.Field(default=None, description="The public key as a JWK.")


class GenerateSpec(meta.Model):
    """Ask the operator to generate the key pair; the private key goes into a Secret."""

    algorithm: Literal["ES256", "EdDSA", "RS256"] = pydantic.Field(
        default="ES256", description="ES256 (P-256), EdDSA (Ed25519) or RS256 (RSA 3072)."
    )


class ServiceAccountKeySpec(meta.Model):
    model_config = pydantic.ConfigDict(
        json_schema_extra=meta.rules(
            (
                "has(self.publicKey) != has(self.generate)",
                "set exactly one of publicKey (recommended: the private key never reaches the cluster) or generate",
            ),
            (
                "has(self.publicKey) == has(oldSelf.publicKey) && has(self.generate) == has(oldSelf.generate)",
                "a key's material is immutable; create a new ServiceAccountKey instead",
            ),
        )
    )

    service_account_name: str = pydantic.Field(
        min_length=1,
        max_length=253,
        pattern=meta.DNS1123_SUBDOMAIN,
        description="The Tessera ServiceAccount, in the same namespace, that this key belongs to.",
        json_schema_extra=meta.rules(("self == oldSelf", "serviceAccountName is immutable; create a new key instead")),
    )
    description: str | None = pydantic.Field(default=None, max_length=1024, description="What this key is for.")
    public_key: PublicKeySpec | None = pydantic.Field(
        default=None,
        description="The public key; its private key stays with the workload.",
        json_schema_extra=meta.rules(
            ("has(self.pem) != has(self.jwk)", "set exactly one of pem or jwk"),
            ("self == oldSelf", "publicKey is immutable; create a new ServiceAccountKey instead"),
        ),
    )
    generate: GenerateSpec | None = pydantic.Field(
        default=None,
        description="Have the operator generate the key pair and keep the private key in a Secret.",
        json_schema_extra=meta.rules(
            ("self == oldSelf", "generate is immutable; create a new ServiceAccountKey instead")
        ),
    )
    expires_at: pydantic.AwareDatetime | None = pydantic.Field(
        default=None, description="When the key stops being trusted (RFC 3339). Empty: never."
    )
    disabled: bool = pydantic.Field(
        default=False, description="A disabled key is removed from every trust bundle but kept for the record."
    )


class ServiceAccountKeyStatus(meta.Model):
    conditions: list[meta.Condition] = pydantic.Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = None
    subject: str | None = pydantic.Field(default=None, description="Subject URN: iss and sub of the JWTs it signs.")
    key_id: str | None = pydantic.Field(default=None, description="RFC 7638 thumbprint: the kid of the JWTs it signs.")
    algorithm: str | None = pydantic.Field(default=None, description="The JWS alg of the JWTs it signs.")
    fingerprint: str | None = pydantic.Field(default=None, description="SHA-256 of the public key (DER SPKI).")
    public_key: str | None = pydantic.Field(default=None, description="The public key, PEM SubjectPublicKeyInfo.")
    expires_at: pydantic.AwareDatetime | None = pydantic.Field(default=None, description="When the key expires.")
    secret_name: str | None = pydantic.Field(
        default=None, description="Secret holding the generated private key (generated keys only)."
    )


class ServiceAccountKey(meta.Resource):
    spec: ServiceAccountKeySpec
    status: ServiceAccountKeyStatus = pydantic.Field(default_factory=ServiceAccountKeyStatus)

    @property
    def subject(self) -> str:
        """The subject of the account the key belongs to."""
        return serviceaccount.subject_urn(self.namespace, self.spec.service_account_name)
