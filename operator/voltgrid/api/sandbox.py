"""The ``Sandbox`` resource: one strongly isolated, burn-after-use execution environment.

Secure by default: the operator runs it on the first sandboxed runtime of its policy that exists
in the cluster and on a node, and refuses to start it on a plain runtime unless the object opts in
with ``isolation.allowUnsandboxed`` (which its status and printer columns then show). Egress is
denied unless allow-listed.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal, Self

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from voltgrid.api import constants
from voltgrid.api.common import (
    CONDITIONS_LIST,
    Condition,
    Duration,
    EnvVar,
    Isolation,
    Model,
    ObjectName,
    Resources,
    SessionId,
    cel,
    check_gpu,
)
from voltgrid.api.meta import ObjectMeta, ResourceInfo


def _check_cidr(text: str) -> str:
    """The apiserver refuses a NetworkPolicy whose ``ipBlock.cidr`` does not parse (``10.0.0.0/99``);
    caught here and by the CRD's CEL ``isCIDR`` so that such a Sandbox is refused when applied,
    not left without a pod."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a CIDR: {exc}") from None
    return text


Cidr = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9a-fA-F:.]+/[0-9]{1,3}$", max_length=64),
    AfterValidator(_check_cidr),
    Field(
        description="An IPv4 or IPv6 CIDR, e.g. '10.0.0.0/8'.",
        json_schema_extra={
            "x-kubernetes-validations": [cel("isCIDR(self)", "must be an IPv4 or IPv6 CIDR such as 10.0.0.0/8")]
        },
    ),
]


class SandboxPhase(StrEnum):
    PENDING = "Pending"
    NOT_STARTED = "NotStarted"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    EXPIRED = "Expired"


class EgressRule(Model):
    """One allowed destination: a CIDR and optionally ports (all ports when empty)."""

    cidr: Cidr
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=list, max_length=32)


class NetworkPolicySpec(Model):
    """Egress is denied by default; ``allowDNS`` and ``egress`` open what the sandbox needs."""

    allow_dns: bool = False
    egress: list[EgressRule] = Field(default_factory=list, max_length=64)


class SandboxStorage(Model):
    claim_name: ObjectName
    mount_path: Annotated[str, StringConstraints(pattern=r"^/.*$", max_length=1024)] = "/data"

    CEL: ClassVar = [cel("!self.mountPath.contains('..')", "mountPath must not contain '..'", ".mountPath")]


class SandboxSpec(Model):
    image: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    function_ref: ObjectName | None = Field(default=None, description="Take image and command from a Function.")
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    resources: Resources = Field(default_factory=Resources)
    isolation: Isolation = Field(default_factory=Isolation)
    ttl: Duration | None = Field(default=None, description="Lifetime from start; the pod is deleted after it.")
    expires_at: datetime | None = Field(default=None, description="Absolute expiry time (RFC 3339).")
    delete_after_expiry: bool = Field(default=False, description="Remove the Sandbox object once expired.")
    network: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    storage: SandboxStorage | None = None
    session_ref: SessionId | None = Field(default=None, description="The session whose directory it sees.")

    CEL: ClassVar = [
        cel("has(self.image) != has(self.functionRef)", "exactly one of image and functionRef must be set"),
        cel("!(has(self.ttl) && has(self.expiresAt))", "set at most one of ttl and expiresAt"),
        cel(
            "!has(self.storage) || (has(self.sessionRef) && has(self.functionRef))",
            "storage needs sessionRef and functionRef (the directory is <namespace>/<functionRef>/<sessionRef>)",
            ".storage",
        ),
    ]

    @model_validator(mode="after")
    def _cross_field(self) -> Self:
        if (self.image is None) == (self.function_ref is None):
            raise ValueError("exactly one of image and functionRef must be set")
        if self.ttl is not None and self.expires_at is not None:
            raise ValueError("set at most one of ttl and expiresAt")
        if self.storage is not None and (self.session_ref is None or self.function_ref is None):
            raise ValueError(
                "storage needs sessionRef and functionRef (the directory is <namespace>/<functionRef>/<sessionRef>)"
            )
        check_gpu(self.resources.gpu)
        return self


class SandboxStatus(Model):
    phase: SandboxPhase = SandboxPhase.PENDING
    pod_name: str | None = None
    endpoint: str | None = None
    runtime_class_name: str | None = None
    sandboxed: bool | None = None
    started_at: datetime | None = None
    expires_at: datetime | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    observed_generation: int | None = None


class Sandbox(Model):
    INFO: ClassVar = ResourceInfo(
        kind="Sandbox",
        plural="sandboxes",
        short_names=("sbx",),
        printer_columns=(
            ("Phase", "string", ".status.phase", ""),
            ("Runtime", "string", ".status.runtimeClassName", ""),
            ("Sandboxed", "boolean", ".status.sandboxed", ""),
            ("Endpoint", "string", ".status.endpoint", ""),
            ("Expires", "string", ".status.expiresAt", ""),
            ("Age", "date", ".metadata.creationTimestamp", ""),
        ),
    )

    api_version: Literal["voltgrid.dev/v1alpha1"] = constants.API_VERSION
    kind: Literal["Sandbox"] = "Sandbox"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: SandboxSpec
    status: SandboxStatus | None = None
