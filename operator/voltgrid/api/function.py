"""The ``Function`` resource: a template that costs nothing until it is called.

A Function says what runs (image, command, port, resources), how it is isolated, how requests
stick to sessions, how it scales and where per-session storage lives. It creates no pod by itself:
instances appear when the gateway reports demand, or for ``minInstances`` and ``warmPool``.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, StringConstraints, model_validator

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
    cel,
    check_gpu,
    parse_duration,
)
from voltgrid.api.meta import ObjectMeta, ResourceInfo
from voltgrid.api.triggers import TRIGGERS_LIST, Trigger, TriggerStatus

HttpPath = Annotated[
    str,
    StringConstraints(pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$", max_length=1024),
    Field(description="An absolute HTTP path on the instance, e.g. '/prestop'."),
]


class Affinity(StrEnum):
    """How a request finds its session: a header, a cookie, the MCP session id, the A2A context
    (``A2A``: one session per Agent2Agent ``contextId`` read from the JSON-RPC body; a request naming
    only a task reaches the context that task was seen in; a message with neither starts a session
    whose ``contextId`` is learned from the agent's answer), or not at all.
    """

    HEADER = "Header"
    COOKIE = "Cookie"
    MCP = "MCP"
    A2A = "A2A"
    NONE = "None"


class PreStop(Model):
    """Called (POST, JSON ``{"sessionId", "reason"}``) before an idle or expired session is released."""

    path: HttpPath
    timeout: Duration = constants.DEFAULT_PRESTOP_TIMEOUT


class SessionPolicy(Model):
    """Session semantics: affinity, sharing, idle release and lifetime."""

    affinity: Affinity = Affinity.HEADER
    header: Annotated[str, StringConstraints(pattern=constants.HEADER_NAME_PATTERN, max_length=128)] = (
        constants.DEFAULT_SESSION_HEADER
    )
    cookie: Annotated[str, StringConstraints(pattern=constants.HEADER_NAME_PATTERN, max_length=128)] = (
        constants.DEFAULT_SESSION_COOKIE
    )
    sessions_per_instance: Annotated[int, Field(ge=1, le=constants.MAX_SESSIONS_PER_INSTANCE)] = 1
    idle_timeout: Duration = constants.DEFAULT_IDLE_TIMEOUT
    max_lifetime: Duration = constants.DEFAULT_MAX_LIFETIME
    pre_stop: PreStop | None = None

    CEL: ClassVar = [
        cel(
            f"duration(self.maxLifetime) <= duration('{constants.MAX_LIFETIME_CEILING}')",
            f"maxLifetime must be at most {constants.MAX_LIFETIME_CEILING}",
            ".maxLifetime",
        ),
        cel(
            "duration(self.idleTimeout) <= duration(self.maxLifetime)",
            "idleTimeout must not be longer than maxLifetime",
            ".idleTimeout",
        ),
    ]

    @model_validator(mode="after")
    def _lifetimes(self) -> Self:
        if parse_duration(self.max_lifetime) > parse_duration(constants.MAX_LIFETIME_CEILING):
            raise ValueError(f"maxLifetime must be at most {constants.MAX_LIFETIME_CEILING}")
        if parse_duration(self.idle_timeout) > parse_duration(self.max_lifetime):
            raise ValueError("idleTimeout must not be longer than maxLifetime")
        return self


class Scaling(Model):
    """Instance counts. With ``minInstances: 0`` an unused Function has no pod at all."""

    min_instances: Annotated[int, Field(ge=0, le=10_000)] = 0
    max_instances: Annotated[int, Field(ge=1, le=10_000)] = 10
    warm_pool: Annotated[int, Field(ge=0, le=10_000, description="Pre-started unbound instances.")] = 0
    concurrency: Annotated[
        int, Field(ge=1, le=10_000, description="In-flight requests per instance (session-less).")
    ] = 100

    CEL: ClassVar = [
        cel("self.minInstances <= self.maxInstances", "minInstances must not exceed maxInstances", ".minInstances"),
        cel("self.warmPool <= self.maxInstances", "warmPool must not exceed maxInstances", ".warmPool"),
    ]

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_instances > self.max_instances:
            raise ValueError("minInstances must not exceed maxInstances")
        if self.warm_pool > self.max_instances:
            raise ValueError("warmPool must not exceed maxInstances")
        return self


class Storage(Model):
    """Per-session directories on one claim, at ``<namespace>/<function>/<session-id>``."""

    claim_name: ObjectName
    mount_path: Annotated[str, StringConstraints(pattern=r"^/.*$", max_length=1024)] = "/data"
    retention: Duration = Field(default="168h", description="How long a released session's directory is kept.")

    CEL: ClassVar = [cel("!self.mountPath.contains('..')", "mountPath must not contain '..'", ".mountPath")]


class FunctionSpec(Model):
    image: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    command: list[str] | None = None
    args: list[str] | None = None
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    port: Annotated[int, Field(ge=1, le=65535)] = constants.DEFAULT_PORT
    resources: Resources = Field(default_factory=Resources)
    isolation: Isolation = Field(default_factory=Isolation)
    sessions: SessionPolicy = Field(default_factory=SessionPolicy)
    scaling: Scaling = Field(default_factory=Scaling)
    storage: Storage | None = None
    triggers: list[Trigger] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Event sources (cron, CloudEvents, queues) delivered through the gateway; see docs/triggers.md.",
    )

    @model_validator(mode="after")
    def _gpu(self) -> Self:
        check_gpu(self.resources.gpu)
        return self

    @model_validator(mode="after")
    def _trigger_names(self) -> Self:
        names = [t.name for t in self.triggers]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"trigger names must be unique: {', '.join(dupes)} repeated")
        return self


class FunctionStatus(Model):
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    instances: int = 0
    ready_instances: int = 0
    warm_instances: int = 0
    active_sessions: int = 0
    url: str | None = None
    runtime_class_name: str | None = None
    observed_generation: int | None = None
    last_scale_time: datetime | None = None
    triggers: list[TriggerStatus] = Field(
        default_factory=list,
        json_schema_extra=TRIGGERS_LIST,
        description="Each trigger's state, written by the trigger dispatcher only (the operator never writes"
        " this key; it sums it up in the TriggersReady condition).",
    )


class Function(Model):
    INFO: ClassVar = ResourceInfo(
        kind="Function",
        plural="functions",
        short_names=("fn", "vfn"),
        printer_columns=(
            ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', ""),
            ("Affinity", "string", ".spec.sessions.affinity", ""),
            ("Instances", "integer", ".status.instances", ""),
            ("Sessions", "integer", ".status.activeSessions", ""),
            ("URL", "string", ".status.url", ""),
            ("Age", "date", ".metadata.creationTimestamp", ""),
        ),
    )

    api_version: Literal["voltgrid.dev/v1alpha1"] = constants.API_VERSION
    kind: Literal["Function"] = "Function"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: FunctionSpec
    status: FunctionStatus | None = None
