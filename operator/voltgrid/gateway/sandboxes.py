"""Warm sandboxes handed out from memory: the gateway's side of ``SandboxTemplate`` pools.

The operator keeps each template's pool of warm pods (:mod:`voltgrid.controllers.pools`); every
replica follows those pods and the templates through the access layer's LIST+WATCH and keeps, in
memory, the ready unclaimed pods of each template and the claimed sandboxes. A claim touches no
etcd object before it is answered:

1. **Who hands out which pod.** Each warm pod carries a pre-minted sandbox id (a label); a replica
   hands out only pods whose id it *owns* on the ring (rendezvous hashing, as for sessions), so two
   replicas never give one pod to two claimants, without a lock or a write. A replica that owns no
   ready pod of the template passes the claim to the owner of one (one internal hop).
2. **How the pod believes it.** The replica mints a token and signs a claim for that id with its
   Ed25519 key (:mod:`voltgrid.sandbox_claims`); the pod's agent checks the signature against the
   public key it was started with, takes the token's digest and the claim's env, and accepts no
   other claim (burn after use).
3. **Bookkeeping afterwards.** The pod is then labelled claimed and annotated with its expiry,
   token digest, principal and metadata — off the hot path, retried — so the operator's pool
   refills, every replica learns the sandbox (and can serve its calls without a hop), and a replica
   that takes over the id after a membership change knows when to burn it.

The owner of a sandbox's id burns it (deletes the pod) when it expires or is deleted; the operator
burns one its expiry passed by a grace, should no gateway have done it. When a template's pool is
dry a claim waits (bounded by ``sandbox_claim_timeout``) and the template is annotated with the
number of waiting claims, which the operator adds to the pool's size: creation on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import aiohttp

from voltgrid.api import constants, pool
from voltgrid.api.common import parse_duration
from voltgrid.api.podspec import Role
from voltgrid.api.sandboxtemplate import SandboxTemplateSpec
from voltgrid.gateway.errors import GatewayError
from voltgrid.gateway.metrics import GatewayMetrics
from voltgrid.registry.ownership import Membership
from voltgrid.registry.scheduler import DeadlineScheduler
from voltgrid.sandbox_claims import sign_claim, token_digest

logger = logging.getLogger(__name__)

Json = dict[str, Any]
TemplateKey = tuple[str, str]
#: Seconds the agent may take to accept a claim before the pod is given up on.
CLAIM_CALL_TIMEOUT: Final = 5.0
#: Phases of a pod whose container will not run again (``restartPolicy: Never``).
ENDED_PHASES: Final = frozenset({"Failed", "Succeeded"})
#: The agent's answer to a claim for a sandbox already claimed (by another replica or the operator).
TAKEN: Final = 409
#: A claim's metadata: a few labels for the claimant's bookkeeping, not a document store.
MAX_METADATA_ENTRIES: Final = 32
MAX_METADATA_CHARS: Final = 4096
#: Retry pace of the bookkeeping patch (the sandbox is already served; only others wait on it).
PATCH_RETRY: Final = 1.0
PATCH_ATTEMPTS: Final = 5


class PoolPods(Protocol):
    """The writes a pool needs, after the fact: the access layer in a cluster, a fake in tests."""

    async def mark_claimed(self, namespace: str, pod: str, labels: Mapping[str, str], annotations: Json) -> None: ...

    async def burn(self, namespace: str, pod: str) -> None: ...

    async def set_waiting(self, namespace: str, template: str, waiting: int) -> None: ...


@dataclass(frozen=True)
class TemplateInfo:
    ttl: float
    max_ttl: float
    revision: str


@dataclass(frozen=True)
class WarmPod:
    """A ready, unclaimed pod of a pool."""

    namespace: str
    template: str
    name: str
    sandbox_id: str
    url: str
    revision: str
    created: str


@dataclass
class SandboxRecord:
    """A claimed sandbox: what the API shows and what its calls are checked against."""

    id: str
    namespace: str
    template: str
    pod: str
    url: str
    token_sha256: str
    principal: str | None
    metadata: dict[str, str]
    claimed_at: float
    expires_at: float
    #: The latest expiry an extension may reach (claim time + the template's maxTtl).
    max_expires_at: float

    def describe(self) -> Json:
        return {
            "sandboxId": self.id,
            "namespace": self.namespace,
            "template": self.template,
            "pod": self.pod,
            "metadata": self.metadata,
            "claimedAt": _rfc3339(self.claimed_at),
            "expiresAt": _rfc3339(self.expires_at),
        }


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def template_info(obj: Json) -> TemplateInfo | None:
    try:
        spec = SandboxTemplateSpec.model_validate(obj.get("spec") or {})
    except ValueError:
        return None
    return TemplateInfo(
        ttl=parse_duration(spec.ttl).total_seconds(),
        max_ttl=parse_duration(spec.max_ttl).total_seconds(),
        revision=pool.template_hash(spec),
    )


def _ready(pod: Json) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )


def _agent_url(pod: Json) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    ports = containers[0].get("ports") or [{}]
    port = ports[0].get("containerPort")
    if not ip or not port:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}"


def parse_metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise GatewayError(400, "bad_metadata", "metadata must map names to strings")
    if len(value) > MAX_METADATA_ENTRIES or len(json.dumps(value)) > MAX_METADATA_CHARS:
        raise GatewayError(
            400, "bad_metadata", f"metadata holds at most {MAX_METADATA_ENTRIES} entries, {MAX_METADATA_CHARS} chars"
        )
    return dict(value)


@dataclass
class _Waiters:
    """Claims waiting for a template's next ready pod."""

    count: int = 0
    event: asyncio.Event = field(default_factory=asyncio.Event)


class SandboxPools:
    """Warm pods and claimed sandboxes as this replica sees them (see the module docstring)."""

    def __init__(
        self,
        membership: Membership,
        pods: PoolPods,
        signing_key: Any,
        *,
        claim_timeout: float,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.membership = membership
        self.metrics = metrics or GatewayMetrics()
        self.metrics.sandboxes.set_function(lambda: len(self.sandboxes))
        self._pods = pods
        self._key = signing_key
        self.claim_timeout = claim_timeout
        self._clock = clock
        self.templates: dict[TemplateKey, TemplateInfo] = {}
        self.warm: dict[TemplateKey, dict[str, WarmPod]] = {}
        self.sandboxes: dict[str, SandboxRecord] = {}
        #: Ids handed out here (or given up on) that a stale pod event must not bring back as warm.
        self._spent: set[str] = set()
        self._waiters: dict[TemplateKey, _Waiters] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.scheduler: DeadlineScheduler[str] = DeadlineScheduler(self._on_due, clock=clock)

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def start(self) -> None:
        self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- what the watches report ----------------------------------------------------------------

    def apply_template(self, event_type: str, obj: Json) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        info = None if event_type == "DELETED" else template_info(obj)
        if info is None:
            self.templates.pop(key, None)
            return
        self.templates[key] = info

    def apply_pod(self, event_type: str, pod: Json) -> None:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        sandbox_id = labels.get(pool.LABEL_SANDBOX_ID)
        template = labels.get(pool.LABEL_TEMPLATE)
        if not sandbox_id or not template or labels.get(constants.LABEL_ROLE) != str(Role.POOL):
            return
        ns = str(meta.get("namespace") or "")
        key = (ns, template)
        warm = self.warm.setdefault(key, {})
        try:
            self._apply_pool_pod(event_type, key, warm, sandbox_id, pod)
        finally:
            self.metrics.sandbox_pool.labels(f"{ns}/{template}").set(len(warm))

    def _apply_pool_pod(
        self, event_type: str, key: TemplateKey, warm: dict[str, WarmPod], sandbox_id: str, pod: Json
    ) -> None:
        ns, template = key
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        phase = (pod.get("status") or {}).get("phase")
        died = phase in ENDED_PHASES  # its agent exited or was killed (out of memory, say): never serves again
        gone = event_type == "DELETED" or bool(meta.get("deletionTimestamp")) or died
        if gone or labels.get(pool.LABEL_CLAIMED) == "true":
            warm.pop(sandbox_id, None)
        if gone:
            record = self.sandboxes.get(sandbox_id)
            self._forget(sandbox_id)
            if event_type == "DELETED":
                self._spent.discard(sandbox_id)  # no later event can bring it back
            elif died and record is not None and self.membership.is_owner(sandbox_id):
                logger.info("sandbox %s (%s/%s) died (%s); burning it", sandbox_id, ns, record.pod, phase)
                self._spawn(self._pods.burn(ns, record.pod))
            return
        if labels.get(pool.LABEL_CLAIMED) == "true":
            self._learn_claimed(ns, template, sandbox_id, pod)
            return
        url = _agent_url(pod)
        if sandbox_id in self._spent or not _ready(pod) or url is None:
            warm.pop(sandbox_id, None)
            return
        warm[sandbox_id] = WarmPod(
            ns,
            template,
            str(meta.get("name") or ""),
            sandbox_id,
            url,
            str(labels.get(pool.LABEL_TEMPLATE_HASH, "")),
            str(meta.get("creationTimestamp") or ""),
        )
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.event.set()

    def _learn_claimed(self, ns: str, template: str, sandbox_id: str, pod: Json) -> None:
        """A sandbox claimed by any replica, from the annotations its claimant wrote."""
        ann = (pod.get("metadata") or {}).get("annotations") or {}
        expires = pool.expiry_of(ann)
        digest = ann.get(pool.ANNOTATION_TOKEN_SHA256)
        url = _agent_url(pod)
        if expires is None or not digest or url is None:
            return  # labelled before annotated: the next event carries both
        known = self.sandboxes.get(sandbox_id)
        try:
            metadata = json.loads(ann.get(pool.ANNOTATION_METADATA) or "{}")
            claimed_at = float(ann.get(pool.ANNOTATION_CLAIMED_AT) or expires)
        except ValueError:
            metadata, claimed_at = {}, expires
        info = self.templates.get((ns, template))
        record = SandboxRecord(
            id=sandbox_id,
            namespace=ns,
            template=template,
            pod=str((pod.get("metadata") or {}).get("name") or ""),
            url=url,
            token_sha256=digest,
            principal=ann.get(pool.ANNOTATION_PRINCIPAL) or None,
            metadata=metadata if isinstance(metadata, dict) else {},
            claimed_at=claimed_at,
            expires_at=expires,
            max_expires_at=claimed_at + (info.max_ttl if info else expires - claimed_at),
        )
        if known is not None:  # this replica's own record is the newer one (extensions land later)
            record.expires_at = max(record.expires_at, known.expires_at)
            record.max_expires_at = known.max_expires_at
        self.sandboxes[sandbox_id] = record
        self._spent.add(sandbox_id)
        self.scheduler.reschedule(sandbox_id, record.expires_at)

    def _forget(self, sandbox_id: str) -> None:
        self.sandboxes.pop(sandbox_id, None)
        self.scheduler.cancel(sandbox_id)
        ended = self._ended.pop(sandbox_id, None)
        if ended is not None:
            ended.set()

    def ended(self, sandbox_id: str) -> asyncio.Event:
        """Set when the sandbox ends (burnt, expired, deleted, died): calls in flight to it stop then,
        rather than wait on a peer that will never answer (a killed gVisor sandbox's network stack
        goes with it, so its packets meet no reset)."""
        event = self._ended.get(sandbox_id)
        if event is None:
            event = self._ended[sandbox_id] = asyncio.Event()
        return event

    # -- claims ---------------------------------------------------------------------------------

    def template(self, namespace: str, name: str) -> TemplateInfo:
        info = self.templates.get((namespace, name))
        if info is None:
            raise GatewayError(404, "template_not_found", f"no SandboxTemplate {namespace}/{name} is served here")
        return info

    def pick(self, key: TemplateKey) -> tuple[WarmPod | None, str | None]:
        """A ready pod this replica owns (current revision first, then the oldest), else the replica
        that owns one (``(None, owner)``), else ``(None, None)``: the pool is dry."""
        warm = self.warm.get(key) or {}
        info = self.templates.get(key)
        revision = info.revision if info else ""
        ranked = sorted(warm.values(), key=lambda p: (p.revision != revision, p.created, p.sandbox_id))
        for candidate in ranked:
            if self.membership.is_owner(candidate.sandbox_id):
                return candidate, None
        if ranked:
            return None, self.membership.owner(ranked[0].sandbox_id)
        return None, None

    async def wait_for_pod(self, key: TemplateKey, deadline: float) -> None:
        """Wait (until ``deadline``, loop time) for a pod of the template to become ready; the template
        is annotated with the waiting claims meanwhile so the operator creates them."""
        waiters = self._waiters.get(key)
        if waiters is None:
            waiters = self._waiters[key] = _Waiters()
        waiters.count += 1
        self._spawn(self._pods.set_waiting(*key, waiters.count))
        try:
            waiters.event.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError
            await asyncio.wait_for(waiters.event.wait(), remaining)
        finally:
            waiters.count -= 1
            if waiters.count == 0:
                del self._waiters[key]
                self._spawn(self._pods.set_waiting(*key, 0))

    async def claim(
        self,
        http: aiohttp.ClientSession,
        pod: WarmPod,
        *,
        ttl: float,
        env: Mapping[str, str],
        metadata: dict[str, str],
        principal: str | None,
    ) -> tuple[SandboxRecord, str] | None:
        """Hand ``pod`` to a claimant: its new record and token, or None when the pod refused (it is
        then given up on and burnt, and the caller tries another)."""
        warm = self.warm.get((pod.namespace, pod.template), {})
        warm.pop(pod.sandbox_id, None)
        self.metrics.sandbox_pool.labels(f"{pod.namespace}/{pod.template}").set(len(warm))
        self._spent.add(pod.sandbox_id)
        token = secrets.token_urlsafe(32)
        digest = token_digest(token)
        now = self._clock()
        signed = sign_claim(self._key, pod.sandbox_id, digest, env, now)
        try:
            async with http.post(
                pod.url + "/claim",
                json={"claim": signed},
                timeout=aiohttp.ClientTimeout(total=CLAIM_CALL_TIMEOUT),
            ) as answer:
                if answer.status == TAKEN:
                    # Another claimer won the pod (the operator binding a Sandbox object): it is
                    # someone's sandbox now, not a broken one; leave it and try the next.
                    logger.info(
                        "warm sandbox %s/%s was claimed by someone else; trying another", pod.namespace, pod.name
                    )
                    return None
                if answer.status != 200:
                    text = (await answer.text())[:300]
                    raise GatewayError(answer.status, "claim_refused", text)
        except (aiohttp.ClientError, OSError, TimeoutError, GatewayError) as exc:
            logger.warning("warm sandbox %s/%s refused its claim (%s); burning it", pod.namespace, pod.name, exc)
            self._spawn(self._pods.burn(pod.namespace, pod.name))
            return None
        info = self.templates.get((pod.namespace, pod.template))
        max_ttl = info.max_ttl if info else ttl
        record = SandboxRecord(
            id=pod.sandbox_id,
            namespace=pod.namespace,
            template=pod.template,
            pod=pod.name,
            url=pod.url,
            token_sha256=digest,
            principal=principal,
            metadata=metadata,
            claimed_at=now,
            expires_at=now + ttl,
            max_expires_at=now + max_ttl,
        )
        self.sandboxes[record.id] = record
        self.scheduler.reschedule(record.id, record.expires_at)
        self._spawn(self._record(record, labels={pool.LABEL_CLAIMED: "true"}))
        return record, token

    def extend(self, record: SandboxRecord, ttl: float) -> None:
        """Expire ``ttl`` seconds from now, but never past the template's maxTtl from the claim."""
        record.expires_at = min(self._clock() + ttl, record.max_expires_at)
        self.scheduler.reschedule(record.id, record.expires_at)
        self._spawn(self._record(record, labels={}))

    async def burn(self, record: SandboxRecord) -> None:
        """Destroy a sandbox: forgotten here at once, its pod deleted (never handed to anyone else)."""
        self._forget(record.id)
        await self._pods.burn(record.namespace, record.pod)

    async def _on_due(self, sandbox_id: str, now: float) -> float | None:
        record = self.sandboxes.get(sandbox_id)
        if record is None:
            return None
        if record.expires_at > now:  # extended meanwhile
            return record.expires_at
        if not self.membership.is_owner(sandbox_id):
            return now + pool.EXPIRY_GRACE / 2  # the owner burns it; look again should it not
        logger.info("sandbox %s (%s/%s) expired; burning it", sandbox_id, record.namespace, record.pod)
        await self.burn(record)
        return None

    async def _record(self, record: SandboxRecord, labels: Mapping[str, str]) -> None:
        annotations = {
            pool.ANNOTATION_EXPIRES: f"{record.expires_at:.3f}",
            pool.ANNOTATION_TOKEN_SHA256: record.token_sha256,
            pool.ANNOTATION_CLAIMED_AT: f"{record.claimed_at:.3f}",
            pool.ANNOTATION_METADATA: json.dumps(record.metadata, separators=(",", ":")),
        }
        if record.principal:
            annotations[pool.ANNOTATION_PRINCIPAL] = record.principal
        for attempt in range(PATCH_ATTEMPTS):
            try:
                await self._pods.mark_claimed(record.namespace, record.pod, labels, annotations)
                return
            except Exception as exc:
                if attempt + 1 == PATCH_ATTEMPTS or record.id not in self.sandboxes:
                    logger.warning("could not record sandbox %s on its pod: %s", record.id, exc)
                    return
                await asyncio.sleep(PATCH_RETRY * (attempt + 1))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.warning("sandbox pool bookkeeping failed: %s", exc)

    async def drain(self) -> None:
        """Wait for the bookkeeping in flight (tests, shutdown)."""
        while self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._tasks, return_exceptions=True)
