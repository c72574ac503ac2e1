"""What the operator reads from a Voltgrid pod, and the pool/reaping decisions made from it.

A pod carries everything these decisions need (labels, the ``idle-timeout`` and ``last-active``
annotations, its phase), so the operator keeps no per-Function state for idle Functions and one
small record per existing pod. See :mod:`voltgrid.controllers` for the label/annotation contract.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from voltgrid.api import constants, podspec, pool
from voltgrid.api.common import parse_duration
from voltgrid.api.function import Scaling

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class PodInfo:
    """One Voltgrid pod as the controllers see it."""

    namespace: str
    name: str
    role: str
    function: str | None = None
    sandbox: str | None = None
    session: str | None = None
    phase: str = "Pending"
    ready: bool = False
    pod_ip: str | None = None
    port: int | None = None
    created: datetime | None = None
    started: datetime | None = None
    last_active: datetime | None = None
    idle_timeout: float | None = None
    keep_warm: bool = False
    deleting: bool = False
    template: str | None = None
    """The SandboxTemplate whose pool the pod belongs to (``voltgrid.dev/sandbox-template``)."""
    template_hash: str = ""
    pool_claimed: bool = False
    """A pool pod handed to a claimant (``voltgrid.dev/claimed``): never returned, never reused."""
    pool_expires: float | None = None
    """A claimed pool pod's expiry (unix seconds), as its claimant (gateway or operator) recorded it."""
    sandbox_id: str | None = None
    """A pool pod's pre-minted sandbox id (``voltgrid.dev/sandbox-id``), which a claim must name."""

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodInfo:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        ann = meta.get("annotations") or {}
        status = pod.get("status") or {}
        conditions = status.get("conditions") or []
        containers = (pod.get("spec") or {}).get("containers") or [{}]
        ports = containers[0].get("ports") or [{}]
        idle = ann.get(podspec.ANNOTATION_IDLE_TIMEOUT)
        try:
            idle_seconds = parse_duration(idle).total_seconds() if idle else None
        except ValueError:
            idle_seconds = None
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            role=str(labels.get(constants.LABEL_ROLE, "")),
            function=labels.get(constants.LABEL_FUNCTION),
            sandbox=labels.get(constants.LABEL_SANDBOX),
            session=labels.get(constants.LABEL_SESSION),
            phase=str(status.get("phase") or "Pending"),
            ready=any(x.get("type") == "Ready" and x.get("status") == "True" for x in conditions),
            pod_ip=status.get("podIP") or None,
            port=ports[0].get("containerPort"),
            created=parse_time(meta.get("creationTimestamp")),
            started=parse_time(status.get("startTime")),
            last_active=parse_time(ann.get(podspec.ANNOTATION_LAST_ACTIVE)),
            idle_timeout=idle_seconds,
            keep_warm=ann.get(podspec.ANNOTATION_KEEP_WARM) == "true",
            deleting=bool(meta.get("deletionTimestamp")),
            template=labels.get(pool.LABEL_TEMPLATE),
            template_hash=str(labels.get(pool.LABEL_TEMPLATE_HASH, "")),
            pool_claimed=labels.get(pool.LABEL_CLAIMED) == "true",
            pool_expires=pool.expiry_of(ann),
            sandbox_id=labels.get(pool.LABEL_SANDBOX_ID),
        )

    @property
    def agent_url(self) -> str | None:
        """``http://podIP:port`` of a pool pod's agent, once the pod has an IP."""
        if not self.pod_ip or self.port is None:
            return None
        host = f"[{self.pod_ip}]" if ":" in self.pod_ip else self.pod_ip
        return f"http://{host}:{self.port}"

    @property
    def alive(self) -> bool:
        return not self.deleting and self.phase not in TERMINAL_PHASES

    @property
    def claimed(self) -> bool:
        """Serving (or reserved for) a session: an instance pod, or a warm pod the gateway touched."""
        return self.role == podspec.Role.INSTANCE or (self.role == podspec.Role.WARM and self.last_active is not None)

    @property
    def unclaimed_warm(self) -> bool:
        return self.role == podspec.Role.WARM and self.last_active is None


@dataclass(frozen=True)
class FunctionCounts:
    instances: int = 0
    ready: int = 0
    warm: int = 0
    active_sessions: int = 0


def count(pods: Iterable[PodInfo]) -> FunctionCounts:
    """Status figures of one Function from its live pods."""
    live = [p for p in pods if p.alive]
    claimed = [p for p in live if p.claimed]
    return FunctionCounts(
        instances=len(claimed),
        ready=sum(1 for p in claimed if p.ready),
        warm=sum(1 for p in live if p.unclaimed_warm),
        active_sessions=len({p.session for p in claimed if p.session}),
    )


@dataclass(frozen=True)
class PoolPlan:
    create_warm: int
    delete: tuple[str, ...]


def plan_pool(scaling: Scaling, pods: Iterable[PodInfo]) -> PoolPlan:
    """How many warm pods to add, and which pods to delete, to keep the pool at size.

    The operator keeps ``max(warmPool, minInstances - claimed)`` unclaimed warm pods, never more
    pods in all than ``maxInstances``. Dead pods (terminal phase) are deleted; excess unclaimed
    warm pods go youngest first.
    """
    pods = list(pods)
    dead = [p.name for p in pods if not p.deleting and p.phase in TERMINAL_PHASES]
    live = [p for p in pods if p.alive]
    claimed = sum(1 for p in live if p.claimed)
    warm = sorted((p for p in live if p.unclaimed_warm), key=lambda p: (p.created is None, p.created))
    wanted = max(scaling.warm_pool, scaling.min_instances - claimed)
    wanted = max(0, min(wanted, scaling.max_instances - claimed))
    excess = [p.name for p in warm[wanted:]] if len(warm) > wanted else []
    return PoolPlan(create_warm=max(0, wanted - len(warm)), delete=tuple(dead + excess))


def reapable(pod: PodInfo, now: datetime, grace: float) -> bool:
    """Safety net for scale to zero: a claimed pod idle for longer than its idle timeout plus
    ``grace`` (the gateway's checkpoint interval) is released by the operator. The gateway
    normally releases it first, after calling preStop; this catches a gateway that died."""
    if not pod.alive or not pod.claimed or pod.keep_warm or pod.idle_timeout is None:
        return False
    since = pod.last_active or pod.created
    if since is None:
        return False
    return now - since > timedelta(seconds=pod.idle_timeout + grace)
