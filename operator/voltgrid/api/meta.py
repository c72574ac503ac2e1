"""Kubernetes object metadata as the API models carry it, and the static facts of each resource
(kind, plural, short names, printer columns) that the CRD generator turns into a CRD."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ObjectMeta(BaseModel):
    """The part of ``metadata`` Voltgrid reads; other fields are kept as they are."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


#: (name, type, JSONPath, priority-0 description) of one ``kubectl get`` column.
PrinterColumn = tuple[str, str, str, str]


@dataclass(frozen=True)
class ResourceInfo:
    """What the CRD says about a resource besides its schema."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...]
    scale: bool = False
    """Serve a ``/scale`` subresource (``.spec.replicas``, ``.status.replicas``, ``.status.selector``),
    so ``kubectl scale``, an HPA or KEDA can size the resource."""

    @property
    def singular(self) -> str:
        return self.kind.lower()
