"""Shared pieces of every Tessera resource: API group, kind metadata, conditions, model base.

Each kind declares one :class:`KindInfo` (names, short names, printer columns); the CRD generator
and the operator both read it, so a kind's names live in exactly one place.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Literal, Self

import pydantic
from pydantic import alias_generators

GROUP = "iam.tessera.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "tessera"

# A deleted ServiceAccount stays until the operator has revoked its tokens and removed this.
FINALIZER = f"{GROUP}/finalizer"

# Labels and annotations Tessera puts on what it owns. Watches select on MANAGED_BY_LABEL.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "tessera"
PART_OF_LABEL = f"{GROUP}/component"


# Kubernetes object names: DNS-1123 subdomain (most names) and label (namespaces).
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def rules(*pairs: tuple[str, str]) -> dict[str, Any]:
    """CEL validation rules (rule, message) for a field's or a model's ``json_schema_extra``."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in pairs]}


@dataclasses.dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0
    description: str = ""


@dataclasses.dataclass(frozen=True)
class KindInfo:
    """Names of one custom resource kind, as kubectl and the API server know it."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    columns: tuple[PrinterColumn, ...]
    description: str
    namespaced: bool = True

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


READY_COLUMNS = (
    PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status', description="Whether it is usable"),
    PrinterColumn("Reason", '.status.conditions[?(@.type=="Ready")].reason', description="Why (not) ready"),
)
AGE_COLUMN = PrinterColumn("Age", ".metadata.creationTimestamp", type="date")


class Model(pydantic.BaseModel):
    """Base of every resource model: camelCase on the wire, snake_case in Python."""

    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )

    def wire(self) -> dict[str, Any]:
        """The JSON-ready form the API server stores (aliases, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Model):
    """A metav1.Condition: the observed state of one aspect of the resource."""

    type: str = pydantic.Field(max_length=316, description="Condition type, e.g. Ready.")
    status: ConditionStatus
    reason: str = pydantic.Field(max_length=1024, description="CamelCase reason for the last transition.")
    message: str = pydantic.Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime.datetime | None = None
    observed_generation: int | None = None


class ObjectRef(Model):
    """Name and namespace of the resource a custom resource came from."""

    name: str
    namespace: str | None = None


class Metadata(Model):
    """The few parts of ObjectMeta the operator reads (models of every object are kept in memory: labels
    and annotations, which the operator does not read, are left out)."""

    name: str
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    deletion_timestamp: datetime.datetime | None = None
    finalizers: tuple[str, ...] = ()


class Resource(Model):
    """Base of the resource models: metadata, the names handlers use, and parsing a body."""

    metadata: Metadata

    @property
    def namespace(self) -> str:
        return self.metadata.namespace or "default"

    @property
    def name(self) -> str:
        return self.metadata.name

    @classmethod
    def parse(cls, body: Any) -> Self:
        """Parse a resource body as Kopf or the API server gives it."""
        return cls.model_validate(dict(body))


def owner_reference(info: KindInfo, resource: Resource) -> dict[str, Any]:
    """The ownerReference that makes ``resource`` (of kind ``info``) the controller of what it owns: garbage
    collection removes the owned object with it."""
    return {
        "apiVersion": API_VERSION,
        "kind": info.kind,
        "name": resource.name,
        "uid": resource.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }
