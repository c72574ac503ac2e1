"""The SandboxTemplate controller: keeps each template's pool of warm sandboxes at its size.

Thin over :mod:`voltgrid.api.pool` (what to create and delete, decided from the pod index) and
:func:`voltgrid.api.podspec.build_pool_pod` (what a pool pod is). On every template event and every
event of one of its pods it plans, deletes and creates, and writes the counts the ``/scale``
subresource and ``kubectl get sandboxtemplates`` show. Creation is paced by a per-template refill
bucket; when the bucket holds the pool back, a deadline on the ONE scheduler comes back when the
next creation is allowed; a claimed pod's expiry (plus a grace) brings it back to burn the pod if
the gateway has not. Each pool pod gets a pre-minted sandbox id and the gateway's *public* claim key
(:mod:`voltgrid.sandbox_claims`), derived from the key file the chart mounts into gateway and
operator alike (Helm cannot derive a public key itself; the operator signs with it only the claims of
``Sandbox`` objects with a ``templateRef``, see :mod:`voltgrid.controllers.sandboxes`) and holds no
permission on Secrets (the chart's RBAC guard keeps it so). Sandboxes of the operator's own waiting
for a pod count as waiting claims, as the gateway's do. Without the key file a template is not
Ready (``NoClaimKey``): its sandboxes could never be claimed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from pydantic import ValidationError

from voltgrid.api import podspec, pool
from voltgrid.api.sandboxtemplate import SandboxTemplate
from voltgrid.controllers import children
from voltgrid.controllers.builders import sandbox as sandbox_builder
from voltgrid.controllers.builders import status as status_builder
from voltgrid.controllers.builders.pods import PodInfo
from voltgrid.controllers.builders.runtime import select_runtime
from voltgrid.controllers.builders.status import READY
from voltgrid.controllers.kube import core_path, group_path, voltgrid_path
from voltgrid.controllers.state import Context, Key, spec_only
from voltgrid.registry.ids import mint_sandbox_id
from voltgrid.sandbox_claims import public_key_text

logger = logging.getLogger(__name__)

Json = dict[str, Any]
DEADLINE_KIND: Final = "pool"
NETPOL_API: Final = "networking.k8s.io/v1"
NETPOLS: Final = "networkpolicies"


def pool_pod(pod: PodInfo) -> pool.PoolPod:
    """The pool's view of an indexed pod."""
    if pod.pool_claimed:
        state = pool.PodState.CLAIMED
    elif not pod.alive:
        state = pool.PodState.DEAD
    elif pod.ready:
        state = pool.PodState.READY
    else:
        state = pool.PodState.WARMING
    created = pod.created.timestamp() if pod.created else 0.0
    return pool.PoolPod(pod.name, pod.template_hash, state, created, pod.pool_expires)


def selector(template: str) -> str:
    """The warm pods' label selector (``status.selector``, read by an HPA through ``/scale``).

    Set-based (``notin``): the apiserver turns ``/scale``'s selector into an autoscaling Scale with a
    parser that refuses ``!=``, so ``kubectl scale`` and an HPA would fail on it."""
    return f"{pool.LABEL_TEMPLATE}={template},{pool.LABEL_CLAIMED} notin (true)"


class PoolController:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.templates: dict[Key, tuple[SandboxTemplate, Json]] = {}
        self.buckets: dict[Key, pool.RefillBucket] = {}
        #: kopf runs the handlers of different pods at once: one reconcile per template at a time,
        #: or two would plan from the same index and create the missing pods twice.
        self.locks: dict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        #: Claims waiting for a pod per template (the gateway's annotation on the template).
        self.waiting: dict[Key, int] = {}
        self.claim_key = public_key_text(ctx.claim_key) if ctx.claim_key is not None else None
        ctx.metrics.watch_pools(self.state_counts, [s.value.lower() for s in pool.PodState])

    def state_counts(self) -> Counter[str]:
        """Pool pods per state over every template (the metric's value at a scrape)."""
        return Counter(pool_pod(p).state.value.lower() for p in self.ctx.pods.all() if p.template is not None)

    async def on_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata") or {}
        key: Key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event_type == "DELETED":  # its pods and NetworkPolicies go with it (owner references)
            self.templates.pop(key, None)
            self.buckets.pop(key, None)
            self.locks.pop(key, None)
            self.waiting.pop(key, None)
            self.ctx.scheduler.cancel((DEADLINE_KIND, *key))
            return
        try:
            template = SandboxTemplate.model_validate(spec_only(body))
        except ValidationError as exc:  # the CRD schema let through what the model refuses
            logger.warning("SandboxTemplate %s/%s is invalid: %s", *key, exc)
            return
        self.templates[key] = (template, dict(body.get("status") or {}))
        self.waiting[key] = pool.waiting_claims(meta.get("annotations"))
        await self.reconcile(key)

    async def on_pod(self, pod: PodInfo) -> None:
        if pod.template is not None:
            await self.reconcile((pod.namespace, pod.template))

    async def on_deadline(self, key: Key) -> None:
        await self.reconcile(key)

    async def reconcile(self, key: Key) -> None:
        async with self.locks[key]:
            await self._reconcile(key)

    async def _reconcile(self, key: Key) -> None:
        entry = self.templates.get(key)
        if entry is None:
            return
        template, current = entry
        ns, name = key
        spec = template.spec
        gen = template.metadata.generation
        revision = pool.template_hash(spec)
        now = self.ctx.clock()
        rt = self.ctx.runtimes
        choice = select_runtime(spec.isolation, rt.classes, rt.nodes.values(), spec.resources.gpu)
        pods = [pool_pod(p) for p in self.ctx.pods.for_template(ns, name)]
        conditions = current.get("conditions")
        if self.claim_key is None or not choice.runnable:
            reason, message = (
                (
                    "NoClaimKey",
                    "the operator has no sandbox claim key (setting sandbox_claim_key_file), so no"
                    " pool sandbox could be claimed; the chart mounts one",
                )
                if self.claim_key is None
                else (choice.reason, choice.message)
            )
            cond = status_builder.condition(conditions, READY, False, reason, message, generation=gen, now=now)
            await self._write(key, current, self._counts(name, pods, revision, gen, cond))
            return
        bucket = self.buckets.get(key)
        if bucket is None or bucket.per_minute != spec.refill_per_minute:
            bucket = self.buckets[key] = pool.RefillBucket.full(spec.refill_per_minute, now.timestamp())
        plan = pool.plan(
            spec,
            pods,
            revision,
            allowance=bucket.available(now.timestamp()),
            now=now.timestamp(),
            waiting=self._waiting(key),
        )
        for victim in plan.delete:
            await self.ctx.client.delete(core_path("pods", ns, victim))
            self.ctx.pods.remove(ns, victim)
        cond = status_builder.condition(conditions, READY, True, "PoolServing", "", generation=gen, now=now)
        try:
            if plan.create:  # egress confined before the first pod of the revision starts
                policy = sandbox_builder.pool_network_policy(template, revision)
                await children.create(self.ctx.client, "NetworkPolicy", group_path(NETPOL_API, NETPOLS, ns), policy)
            for _ in range(plan.create):
                manifest = podspec.build_pool_pod(
                    template,
                    suffix=secrets.token_hex(4),
                    template_hash=revision,
                    runtime_class_name=choice.runtime_class_name,
                    sandbox_id=mint_sandbox_id(),
                    claim_key=self.claim_key,
                )
                created = await children.create(self.ctx.client, "Pod", core_path("pods", ns), manifest)
                self.ctx.pods.upsert(PodInfo.from_pod(created or manifest))
                self.ctx.metrics.pool_pods_created.inc()
                bucket.take(1)
        except children.ChildRejected as exc:
            cond = status_builder.condition(conditions, READY, False, exc.reason, str(exc), generation=gen, now=now)
        pods = [pool_pod(p) for p in self.ctx.pods.for_template(ns, name)]
        await self._write(key, current, self._counts(name, pods, revision, gen, cond))
        short = spec.replicas + self._waiting(key) - pool.counts(pods, revision).updated
        wake: datetime | None = None
        if short > 0 and bucket.available(now.timestamp()) < 1:  # held back by the refill rate
            wake = now + timedelta(seconds=60.0 / spec.refill_per_minute)
        expiries = [p.expires + pool.EXPIRY_GRACE for p in pods if p.state is pool.PodState.CLAIMED and p.expires]
        if expiries:  # back to burn a claimed sandbox the gateway did not
            burn = datetime.fromtimestamp(min(expiries), UTC) + timedelta(seconds=1)
            wake = burn if wake is None else min(wake, burn)
        if wake is not None:
            self.ctx.scheduler.schedule((DEADLINE_KIND, ns, name), wake)

    def _waiting(self, key: Key) -> int:
        """Claims waiting for a warm pod: the gateway's (its annotation) and this operator's own
        ``templateRef`` Sandboxes (in memory: the operator writes no annotation it would then read)."""
        return min(self.waiting.get(key, 0) + len(self.ctx.pool_waiting.get(key, ())), pool.MAX_WAITING)

    def _counts(self, name: str, pods: list[pool.PoolPod], revision: str, gen: int | None, cond: Json) -> Json:
        counts = pool.counts(pods, revision)
        return {
            "replicas": counts.replicas,
            "ready": counts.ready,
            "warming": counts.warming,
            "claimed": counts.claimed,
            "updated": counts.updated,
            "templateHash": revision,
            "selector": selector(name),
            "conditions": [cond],
            "observedGeneration": gen,
        }

    async def _write(self, key: Key, current: Json, patch: Json) -> None:
        if not status_builder.changed(current, patch):
            return
        await self.ctx.client.patch(voltgrid_path("sandboxtemplates", *key) + "/status", {"status": patch})
        template, _ = self.templates[key]
        self.templates[key] = (template, {**current, **patch})
