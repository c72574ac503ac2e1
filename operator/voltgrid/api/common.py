"""Building blocks shared by the three resources: base model, durations, quantities, conditions.

Field names are camelCase on the wire (Kubernetes style) and snake_case in Python. Constraints
are expressed as pydantic metadata so that the same rule validates in Python and lands in the CRD's
OpenAPI schema; rules that span fields are CEL (``x-kubernetes-validations``) attached with
:func:`cel`, and mirrored in a model validator where Python code builds objects itself.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetJsonSchemaHandler, StringConstraints
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from voltgrid.api import constants

_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
#: Longest duration: what Go's ``time.Duration`` (int64 nanoseconds, so CEL's ``duration()`` and the
#: apiserver) can hold, about 292 years; longer ones are refused instead of overflowing later.
MAX_DURATION_SECONDS: Final = (2**63 - 1) / 1e9


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style duration ("1h30m", "250ms") into a timedelta; ValueError names the problem."""
    if not re.fullmatch(constants.DURATION_PATTERN, text):
        raise ValueError(f"invalid duration {text!r}: use a number with a unit ms, s, m or h, e.g. '15m'")
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"invalid duration {text!r}: longer than the longest duration, 2562047h")
    return timedelta(seconds=seconds)


def _check_duration(text: str) -> str:
    parse_duration(text)
    return text


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One CEL validation rule for ``x-kubernetes-validations``."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


Duration = Annotated[
    str,
    StringConstraints(pattern=constants.DURATION_PATTERN, max_length=32),
    AfterValidator(_check_duration),
    Field(description="A duration such as '30s', '15m' or '1h30m' (units ms, s, m, h)."),
]
Quantity = Annotated[
    str,
    StringConstraints(pattern=constants.QUANTITY_PATTERN, max_length=32),
    Field(description="A Kubernetes quantity such as '500m', '1', '256Mi' or '2Gi'."),
]
SessionId = Annotated[
    str,
    StringConstraints(pattern=constants.SESSION_ID_PATTERN, max_length=constants.SESSION_ID_MAX_LENGTH),
    Field(description="A session id: a DNS label (lowercase letters, digits and '-', at most 63)."),
]
ObjectName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63),
    Field(description="The name of an object in the same namespace."),
]


class Model(BaseModel):
    """Base of every API model: camelCase aliases, unknown fields rejected, validated assignment."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """Attach the class's own CEL rules (a ``CEL`` class attribute) to its schema."""
        schema = handler(core_schema)
        rules = cls.__dict__.get("CEL")
        if rules:
            handler.resolve_ref_schema(schema)["x-kubernetes-validations"] = list(rules)
        return schema

    def to_wire(self) -> dict[str, Any]:
        """The object as it goes to the apiserver: camelCase, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class EnvVar(Model):
    """An environment variable set in the instance's container."""

    name: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=253)]
    value: str = ""


#: Schema of every ``status.conditions`` list: a map keyed by type, as server-side apply expects.
CONDITIONS_LIST: Final[JsonDict] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Model):
    """A Kubernetes-style status condition."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)]
    status: ConditionStatus
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    last_transition_time: datetime | None = None
    observed_generation: Annotated[int, Field(ge=0)] | None = None


class Resources(Model):
    """Compute for one instance. ``gpu`` is a fraction of a card (0.125, 0.25, 0.5) or whole cards."""

    cpu: Quantity = "100m"
    memory: Quantity = "128Mi"
    gpu: Annotated[
        float,
        Field(
            ge=0,
            le=16,
            description="GPUs per instance: 0.125, 0.25 or 0.5 of a card (fractional slice), or whole cards.",
        ),
    ] = 0

    CEL: ClassVar = [
        cel(
            "self.gpu == 0.0 || self.gpu == 0.125 || self.gpu == 0.25 || self.gpu == 0.5"
            " || double(int(self.gpu)) == self.gpu",
            "gpu must be 0.125, 0.25, 0.5 or a whole number of cards",
            ".gpu",
        )
    ]


def check_gpu(gpu: float) -> None:
    """A GPU request must be a supported fraction or a whole number of cards."""
    if gpu and gpu not in constants.GPU_FRACTIONS and not float(gpu).is_integer():
        raise ValueError(f"resources.gpu {gpu} must be one of {constants.GPU_FRACTIONS} or a whole number of cards")


class Isolation(Model):
    """Which runtime isolates the pods: an explicit class, or the first available from a policy."""

    runtime_class_name: ObjectName | None = Field(
        default=None, description="Use exactly this RuntimeClass (skips the policy)."
    )
    policy: list[Annotated[str, StringConstraints(min_length=1, max_length=63)]] = Field(
        default_factory=lambda: list(constants.DEFAULT_RUNTIME_POLICY),
        json_schema_extra={"default": list(constants.DEFAULT_RUNTIME_POLICY)},
        max_length=16,
        description="RuntimeClasses to try in order; the first that exists and has a node is used.",
    )
    allow_unsandboxed: bool = Field(
        default=False,
        description="Opt in to running on the node's default runtime (runc) when no sandbox is available.",
    )
