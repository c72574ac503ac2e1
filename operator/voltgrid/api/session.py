"""The ``Session`` resource: a declarative, long-lived session managed with kubectl or GitOps.

Most sessions never become objects: they live only in the gateway's registry. A Session object is
for the few a user wants to see and manage as a resource (an always-on agent). Its status is
checkpointed coarsely by the operator, never written per request.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field

from voltgrid.api import constants
from voltgrid.api.common import CONDITIONS_LIST, Condition, Duration, Model, ObjectName, SessionId, cel
from voltgrid.api.meta import ObjectMeta, ResourceInfo


class SessionPhase(StrEnum):
    PENDING = "Pending"
    ACTIVE = "Active"
    IDLE = "Idle"
    RELEASED = "Released"
    EXPIRED = "Expired"


class SessionSpec(Model):
    function_ref: ObjectName = Field(description="The Function this session runs on (same namespace).")
    session_id: SessionId | None = Field(
        default=None, description="The session id the gateway routes by; defaults to the object's name."
    )
    idle_timeout: Duration | None = Field(default=None, description="Overrides the Function's idleTimeout.")
    max_lifetime: Duration | None = Field(default=None, description="Overrides the Function's maxLifetime.")
    keep_warm: bool = Field(default=False, description="Keep an instance bound even while idle.")

    CEL: ClassVar = [
        cel(
            "!has(self.maxLifetime) || duration(self.maxLifetime) <= duration('24h')",
            "maxLifetime must be at most 24h",
            ".maxLifetime",
        ),
        cel(
            "!has(self.idleTimeout) || !has(self.maxLifetime)"
            " || duration(self.idleTimeout) <= duration(self.maxLifetime)",
            "idleTimeout must not be longer than maxLifetime",
            ".idleTimeout",
        ),
        cel(
            "!has(oldSelf.sessionId) || (has(self.sessionId) && self.sessionId == oldSelf.sessionId)",
            "sessionId is immutable",
            ".sessionId",
        ),
        cel("self.functionRef == oldSelf.functionRef", "functionRef is immutable", ".functionRef"),
    ]


class SessionStatus(Model):
    phase: SessionPhase = SessionPhase.PENDING
    session_id: str | None = None
    instance: str | None = None
    last_activity: datetime | None = None
    expires_at: datetime | None = None
    storage_path: str | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    observed_generation: int | None = None


class Session(Model):
    INFO: ClassVar = ResourceInfo(
        kind="Session",
        plural="sessions",
        short_names=("vsess", "vss"),
        printer_columns=(
            ("Function", "string", ".spec.functionRef", ""),
            ("Phase", "string", ".status.phase", ""),
            ("Instance", "string", ".status.instance", ""),
            ("Expires", "string", ".status.expiresAt", ""),
            ("Age", "date", ".metadata.creationTimestamp", ""),
        ),
    )

    api_version: Literal["voltgrid.dev/v1alpha1"] = constants.API_VERSION
    kind: Literal["Session"] = "Session"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: SessionSpec
    status: SessionStatus | None = None
