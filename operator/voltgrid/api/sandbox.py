"""The ``Sandbox`` resource: one strongly isolated, burn-after-use execution environment.

Secure by default: the operator runs it on the first sandboxed runtime of its policy that exists
in the cluster and on a node, and refuses to start it on a plain runtime unless the object opts in
with ``isolation.allowUnsandboxed`` (which its status and printer columns then show). Egress is
denied unless allow-listed.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Final, Literal, Self

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


#: What a pool sandbox's env names must look like: the in-sandbox agent refuses a claim with others.
CLAIM_ENV_NAME: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: The fields that shape a pod of the Sandbox's own; a sandbox from a template's pool has its pod
#: already (the template shaped it), so setting any of them with ``templateRef`` is refused.
POD_FIELDS: Final = ("image", "command", "args", "port", "resources", "isolation", "network", "storage", "sessionRef")

TokenSha256 = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9a-f]{64}$"),
    Field(description="Hex SHA-256 (64 lowercase hex digits) of the token its user generated."),
]


class SandboxSpec(Model):
    image: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None
    function_ref: ObjectName | None = Field(default=None, description="Take image and command from a Function.")
    template_ref: ObjectName | None = Field(
        default=None,
        description="Bind a warm sandbox of this SandboxTemplate's pool (same namespace) instead of starting a pod;"
        " needs tokenSha256, the calls through the gateway's Sandbox API carry the token.",
    )
    token_sha256: TokenSha256 | None = Field(
        default=None,
        description="With templateRef: the hex SHA-256 of a token the user generated (the token itself is never"
        ' stored), e.g. `printf %s "$TOKEN" | sha256sum`.',
    )
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
        cel(
            "(has(self.image) ? 1 : 0) + (has(self.functionRef) ? 1 : 0) + (has(self.templateRef) ? 1 : 0) == 1",
            "exactly one of image, functionRef and templateRef must be set",
        ),
        cel("has(self.templateRef) == has(self.tokenSha256)", "templateRef and tokenSha256 go together"),
        cel(
            "!has(self.templateRef) || !(has(self.command) || has(self.args) || has(self.port)"
            " || has(self.storage) || has(self.sessionRef))",
            "with templateRef the template shapes the pod: command, args, port, storage and sessionRef must be unset",
        ),
        cel(
            "!has(self.templateRef) || !has(self.network) || ((!has(self.network.allowDns) || !self.network.allowDns)"
            " && (!has(self.network.egress) || size(self.network.egress) == 0))",
            "with templateRef the template's network policy applies: network must be unset",
        ),
        cel(
            "!has(self.templateRef) || !has(self.env) || self.env.all(e, e.name.matches('^[A-Za-z_][A-Za-z0-9_]*$'))",
            "with templateRef env names must match ^[A-Za-z_][A-Za-z0-9_]*$ (they go into the claim)",
            ".env",
        ),
        cel("!(has(self.ttl) && has(self.expiresAt))", "set at most one of ttl and expiresAt"),
        cel(
            "!has(self.storage) || (has(self.sessionRef) && has(self.functionRef))",
            "storage needs sessionRef and functionRef (the directory is <namespace>/<functionRef>/<sessionRef>)",
            ".storage",
        ),
    ]

    @model_validator(mode="after")
    def _cross_field(self) -> Self:
        if [self.image, self.function_ref, self.template_ref].count(None) != 2:
            raise ValueError("exactly one of image, functionRef and templateRef must be set")
        if (self.template_ref is None) != (self.token_sha256 is None):
            raise ValueError("templateRef and tokenSha256 go together")
        if self.template_ref is not None:
            self._check_from_template()
        if self.ttl is not None and self.expires_at is not None:
            raise ValueError("set at most one of ttl and expiresAt")
        if self.storage is not None and (self.session_ref is None or self.function_ref is None):
            raise ValueError(
                "storage needs sessionRef and functionRef (the directory is <namespace>/<functionRef>/<sessionRef>)"
            )
        check_gpu(self.resources.gpu)
        return self

    def _check_from_template(self) -> None:
        """With ``templateRef`` the pod exists already: the fields that would shape one are refused.
        Those with defaults (resources, isolation, network) count as set when they differ from them,
        which is all a stored object can tell (the CRD fills the defaults in)."""
        defaults = SandboxSpec(image="x")
        mine = self.model_dump(by_alias=True, exclude_none=True)
        theirs = defaults.model_dump(by_alias=True, exclude_none=True)
        shaped = [f for f in POD_FIELDS if f != "image" and mine.get(f) != theirs.get(f)]
        if shaped:
            raise ValueError(f"with templateRef the template shapes the pod: {', '.join(shaped)} must be unset")
        bad = [e.name for e in self.env if not re.fullmatch(CLAIM_ENV_NAME, e.name)]
        if bad:
            raise ValueError(f"with templateRef env names must match {CLAIM_ENV_NAME} (they go into the claim): {bad}")


class SandboxStatus(Model):
    phase: SandboxPhase = SandboxPhase.PENDING
    pod_name: str | None = None
    sandbox_id: str | None = Field(default=None, description="With templateRef: the id of the bound pool sandbox.")
    url: str | None = Field(
        default=None, description="With templateRef: its Sandbox API path on the gateway (call it with the token)."
    )
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
            ("SandboxId", "string", ".status.sandboxId", ""),
            ("Expires", "string", ".status.expiresAt", ""),
            ("Age", "date", ".metadata.creationTimestamp", ""),
        ),
    )

    api_version: Literal["voltgrid.dev/v1alpha1"] = constants.API_VERSION
    kind: Literal["Sandbox"] = "Sandbox"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: SandboxSpec
    status: SandboxStatus | None = None
