"""A SandboxTemplate's warm pool as pure decisions: what to create, what to burn, what to hand out.

The operator (which creates and deletes the pods) and the gateway (which hands warm sandboxes out
from memory) share these functions so that both read a pool the same way. Everything here is a
function of the observed pods, the template and the clock — no I/O — and is tested table-style.

The rules:

- **Burn after use.** A claimed pod never goes back to the pool: its claim's TTL or its deletion ends
  it (the gateway deletes it on time; the pool deletes it :data:`EXPIRY_GRACE` seconds past its
  expiry, for a gateway that was down). A dead pod (failed, or gone from under its claim) is deleted.
- **Desired warm pods** = ``spec.replicas`` plus claims waiting for a pod (creation on demand when
  the pool ran dry), counted in pods of the *current* revision only.
- **Bounded refill.** At most ``maxWarming`` pods of the pool start at once, and at most
  ``refillPerMinute`` are created a minute (a token bucket holding one minute's worth), so a burst
  of claims cannot stampede the apiserver or the nodes.
- **Rollout without touching claims.** Pods carry the hash of the template fields they are built
  from; a change of those fields makes warm pods of the old hash outdated. Outdated *warming* pods
  go at once; outdated *ready* pods go only as pods of the new revision become ready (surge), so the
  pool's ready count never drops below ``replicas`` during a rollout. Claimed pods keep their revision.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from voltgrid.api import constants
from voltgrid.api.sandboxtemplate import SandboxTemplateSpec

#: Pod label: the SandboxTemplate whose pool the pod belongs to.
LABEL_TEMPLATE: Final = f"{constants.LABEL_PREFIX}sandbox-template"
#: Pod label: the hash of the template fields the pod was built from (its revision).
LABEL_TEMPLATE_HASH: Final = f"{constants.LABEL_PREFIX}template-hash"
#: Pod label: ``"true"`` once the pod was handed to a claimant (burnt after use, never handed again).
LABEL_CLAIMED: Final = f"{constants.LABEL_PREFIX}claimed"
#: Pod label: the sandbox id pre-minted for a warm pod, which the gateway's signed claim must name.
LABEL_SANDBOX_ID: Final = f"{constants.LABEL_PREFIX}sandbox-id"
#: Pod annotations the gateway writes (after the claim, off the hot path) so that any replica and the
#: operator know a claimed sandbox: when it expires (unix seconds), the SHA-256 of its token, the
#: claimant (JWT principal, if any) and the claim's metadata (JSON).
ANNOTATION_EXPIRES: Final = f"{constants.LABEL_PREFIX}sandbox-expires"
ANNOTATION_TOKEN_SHA256: Final = f"{constants.LABEL_PREFIX}sandbox-token-sha256"
ANNOTATION_PRINCIPAL: Final = f"{constants.LABEL_PREFIX}sandbox-principal"
ANNOTATION_METADATA: Final = f"{constants.LABEL_PREFIX}sandbox-metadata"
ANNOTATION_CLAIMED_AT: Final = f"{constants.LABEL_PREFIX}sandbox-claimed-at"
#: SandboxTemplate annotation the gateway sets while claims wait for a warm pod (the pool ran dry):
#: how many; the pool creates that many beyond ``replicas`` (creation on demand), paced as any refill.
ANNOTATION_WAITING: Final = f"{constants.LABEL_PREFIX}claims-waiting"
#: The gateway's Sandbox API, under which a claimed sandbox is served as ``<prefix>/<sandbox id>``
#: (a ``Sandbox`` object bound from a pool shows that path in ``status.url``).
SANDBOX_API_PREFIX: Final = "/_voltgrid/v1/sandboxes"
#: Seconds past its expiry after which the operator burns a claimed sandbox the gateway did not
#: (the gateway deletes it on time; this is the safety net for a gateway that was down).
EXPIRY_GRACE: Final = 60.0
#: Fields that size or pace the pool or bound claims: changing them changes no pod, so no rollout.
POOL_ONLY_FIELDS: Final = frozenset({"replicas", "maxWarming", "refillPerMinute", "ttl", "maxTtl"})
HASH_CHARS: Final = 10


class PodState(StrEnum):
    WARMING = "Warming"
    READY = "Ready"
    CLAIMED = "Claimed"
    DEAD = "Dead"


@dataclass(frozen=True)
class PoolPod:
    """What the pool needs to know of one of its pods."""

    name: str
    template_hash: str
    state: PodState
    created: float
    """Creation time (seconds); the oldest outdated pods go first."""
    expires: float | None = None
    """A claimed pod's expiry (unix seconds), once the gateway recorded it."""


@dataclass(frozen=True)
class Counts:
    ready: int
    warming: int
    claimed: int
    updated: int
    """Warm (ready or warming) pods of the current revision."""

    @property
    def replicas(self) -> int:
        """Warm pods: the ``/scale`` subresource's ``status.replicas``."""
        return self.ready + self.warming


@dataclass(frozen=True)
class Plan:
    create: int
    delete: tuple[str, ...]
    counts: Counts


def template_hash(spec: SandboxTemplateSpec) -> str:
    """The revision of the pods a template builds: a hash of every field but the pool's sizing."""
    wire = {k: v for k, v in spec.to_wire().items() if k not in POOL_ONLY_FIELDS}
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()[:HASH_CHARS]


def expiry_of(annotations: dict[str, str] | None) -> float | None:
    """A claimed pod's expiry (unix seconds) from its annotation; None when unset or junk."""
    raw = (annotations or {}).get(ANNOTATION_EXPIRES)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def waiting_claims(annotations: dict[str, str] | None) -> int:
    """The claims waiting for a pod, from the template's annotation (junk counts as none)."""
    raw = (annotations or {}).get(ANNOTATION_WAITING, "0")
    return min(int(raw), MAX_WAITING) if raw.isdigit() else 0


#: More waiting claims than this are not turned into pods at once (the refill rate paces them anyway).
MAX_WAITING: Final = 1000


@dataclass
class RefillBucket:
    """A token bucket holding at most one minute's worth of creations, full at first."""

    per_minute: int
    tokens: float
    updated: float

    @classmethod
    def full(cls, per_minute: int, now: float) -> RefillBucket:
        return cls(per_minute, float(per_minute), now)

    def available(self, now: float) -> int:
        elapsed = max(0.0, now - self.updated)  # a clock read out of order neither mints nor burns tokens
        self.tokens = min(float(self.per_minute), self.tokens + elapsed * self.per_minute / 60.0)
        self.updated = max(self.updated, now)
        return int(self.tokens)

    def take(self, n: int) -> None:
        self.tokens -= n


def counts(pods: Iterable[PoolPod], current_hash: str) -> Counts:
    pods = list(pods)
    return Counts(
        ready=sum(p.state is PodState.READY for p in pods),
        warming=sum(p.state is PodState.WARMING for p in pods),
        claimed=sum(p.state is PodState.CLAIMED for p in pods),
        updated=sum(p.state in (PodState.READY, PodState.WARMING) and p.template_hash == current_hash for p in pods),
    )


def expired(pod: PoolPod, now: float) -> bool:
    """A claimed pod past its expiry and the grace: burnt by the pool, the gateway having missed it."""
    return pod.state is PodState.CLAIMED and pod.expires is not None and now > pod.expires + EXPIRY_GRACE


def plan(
    spec: SandboxTemplateSpec,
    pods: Iterable[PoolPod],
    current_hash: str,
    *,
    allowance: int,
    now: float,
    waiting: int = 0,
) -> Plan:
    """What to create and delete now. ``allowance``: creations the refill bucket allows this moment;
    ``waiting``: claims with no ready pod to take (the pool ran dry)."""
    pods = list(pods)
    delete: list[str] = [p.name for p in pods if p.state is PodState.DEAD or expired(p, now)]
    current = [p for p in pods if p.template_hash == current_hash]
    outdated = [p for p in pods if p.template_hash != current_hash]
    # Rollout: outdated warming pods serve nobody; outdated ready ones go as new ones become ready.
    delete += [p.name for p in outdated if p.state is PodState.WARMING]
    cur_ready = sorted((p for p in current if p.state is PodState.READY), key=lambda p: p.created)
    cur_warming = sorted((p for p in current if p.state is PodState.WARMING), key=lambda p: p.created)
    old_ready = sorted((p for p in outdated if p.state is PodState.READY), key=lambda p: p.created)
    desired = spec.replicas + waiting
    surplus_old = max(0, len(cur_ready) + len(old_ready) - spec.replicas)
    delete += [p.name for p in old_ready[: min(surplus_old, len(old_ready))]]
    # Scale down: warming pods first (newest first: furthest from ready), then the oldest ready.
    surplus = len(cur_ready) + len(cur_warming) - desired
    if surplus > 0:
        drop_warming = cur_warming[::-1][:surplus]
        delete += [p.name for p in drop_warming]
        delete += [p.name for p in cur_ready[: surplus - len(drop_warming)]]
    need = desired - len(cur_ready) - len(cur_warming)
    create = max(0, min(need, spec.max_warming - len(cur_warming), allowance))
    return Plan(create=create, delete=tuple(delete), counts=counts(pods, current_hash))


def pick_for_claim(pods: Iterable[PoolPod], current_hash: str) -> PoolPod | None:
    """The ready pod a claim takes: the current revision first, then the oldest (it has waited longest)."""
    ready = [p for p in pods if p.state is PodState.READY]
    if not ready:
        return None
    return min(ready, key=lambda p: (p.template_hash != current_hash, p.created))
