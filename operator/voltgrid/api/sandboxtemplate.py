"""The ``SandboxTemplate`` resource: a pool of warm sandboxes, claimed without a cold start.

A template says what a sandbox is (image, resources, isolation, egress allow-list, env) and how many
to keep warm (``replicas``, so that ``kubectl scale``, an HPA or KEDA can size the pool through the
``/scale`` subresource). A warm sandbox is a running pod with the in-sandbox agent
(:mod:`voltgrid.sandbox_agent`) waiting for its token; a claim hands one out and the pool refills,
at most ``maxWarming`` pods starting at once and ``refillPerMinute`` new ones a minute, so a burst of
claims cannot stampede the apiserver and the nodes. Sandboxes are burnt after use: a claimed pod is
never returned to the pool. Only the gateway can claim one: each warm sandbox carries the gateway's
public claim key and a pre-minted id, and accepts one claim signed for that id
(:mod:`voltgrid.sandbox_claims`), so no Secret of the template's owner is involved. A template
change rolls out to warm pods only (the template hash label tells the revisions apart); claimed
sandboxes keep the revision they were claimed from.

The security posture is the ``Sandbox``'s: a sandboxed runtime of the isolation policy, egress
denied unless allow-listed.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Final, Literal

from pydantic import Field, StringConstraints

from voltgrid.api import constants
from voltgrid.api.common import (
    CONDITIONS_LIST,
    Condition,
    Duration,
    EnvVar,
    Isolation,
    Model,
    Resources,
    cel,
)
from voltgrid.api.meta import ObjectMeta, ResourceInfo
from voltgrid.api.sandbox import NetworkPolicySpec

#: The in-sandbox agent's port in the pool's pods (``python -m voltgrid.sandbox_agent``).
AGENT_PORT: Final = 49999
#: More warm pods than this per template is a cluster, not a pool: ask for a second template.
MAX_POOL_SIZE: Final = 10_000


class SandboxTemplateSpec(Model):
    image: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        description="An image that runs the sandbox agent (e.g. localhost/voltgrid/sandbox-python)."
    )
    command: list[str] | None = Field(
        default=None, description="Overrides the image's entrypoint; it must serve the agent on agentPort."
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    agent_port: Annotated[int, Field(ge=1, le=65535)] = AGENT_PORT
    resources: Resources = Field(default_factory=Resources)
    isolation: Isolation = Field(default_factory=Isolation)
    network: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    replicas: Annotated[int, Field(ge=0, le=MAX_POOL_SIZE)] = Field(
        default=0, description="Warm sandboxes to keep ready (the /scale subresource's spec.replicas)."
    )
    max_warming: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=10, description="At most this many pods of the pool start at once."
    )
    refill_per_minute: Annotated[int, Field(ge=1, le=60_000)] = Field(
        default=120, description="At most this many new warm pods a minute (a token bucket of one minute's worth)."
    )
    ttl: Duration = Field(default="15m", description="A claim's lifetime when it asks for none.")
    max_ttl: Duration = Field(default="24h", description="The longest lifetime a claim or an extension may reach.")

    CEL: ClassVar = [
        cel(
            "duration(self.ttl) <= duration(self.maxTtl)",
            "ttl must not exceed maxTtl",
            ".ttl",
        )
    ]


class SandboxTemplateStatus(Model):
    replicas: int = Field(default=0, description="Warm pods, ready or warming (the /scale status.replicas).")
    ready: int = Field(default=0, description="Warm pods whose agent answers: what a claim can take now.")
    warming: int = Field(default=0, description="Warm pods still starting.")
    claimed: int = Field(default=0, description="Sandboxes handed out and not yet burnt.")
    updated: int = Field(default=0, description="Warm pods of the current template revision.")
    template_hash: str | None = Field(default=None, description="The current revision's hash (pod label).")
    selector: str | None = Field(default=None, description="The warm pods' label selector (for an HPA).")
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra=CONDITIONS_LIST)
    observed_generation: int | None = None


class SandboxTemplate(Model):
    INFO: ClassVar = ResourceInfo(
        kind="SandboxTemplate",
        plural="sandboxtemplates",
        short_names=("sbxt",),
        printer_columns=(
            ("Desired", "integer", ".spec.replicas", ""),
            ("Ready", "integer", ".status.ready", ""),
            ("Warming", "integer", ".status.warming", ""),
            ("Claimed", "integer", ".status.claimed", ""),
            ("Updated", "integer", ".status.updated", ""),
            ("Age", "date", ".metadata.creationTimestamp", ""),
        ),
        scale=True,
    )

    api_version: Literal["voltgrid.dev/v1alpha1"] = constants.API_VERSION
    kind: Literal["SandboxTemplate"] = "SandboxTemplate"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: SandboxTemplateSpec
    status: SandboxTemplateStatus | None = None
