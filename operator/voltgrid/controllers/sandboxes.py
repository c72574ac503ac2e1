"""Sandbox controller: one pod per Sandbox, on a sandboxed runtime or not at all.

On the first reconcile the runtime is chosen by policy; none available (and no opt-in) leaves the
Sandbox NotStarted with a ``NoSandboxRuntime`` condition and an Event, and it is retried when the
cluster's RuntimeClasses or nodes change. Otherwise its egress NetworkPolicy is created BEFORE its
pod, so the pod never runs unconfined. Phase and endpoint follow the pod's watch events. Expiry
(``ttl``/``expiresAt``) and deletion after expiry are deadlines in the shared scheduler.

A Sandbox with a ``templateRef`` starts no pod: it binds a warm pod of that SandboxTemplate's pool
the way a gateway replica claims one (:mod:`voltgrid.gateway.sandboxes`), for kubectl and GitOps
users. The operator signs a claim for the pod's pre-minted id with the claim key it already holds,
carrying the SHA-256 the user put in ``tokenSha256`` (the token itself never reaches etcd) and the
Sandbox's env; the agent accepts one claim only. Then it records the claim on the pod as the gateway
does (label and annotations: every gateway replica learns the sandbox and serves
``status.url`` with the user's token) plus the Sandbox's label, by which the pod is burnt with the
Sandbox. Gateway replicas and the operator may race for one pod: the loser gets 409 and takes the
next pod, leaving the winner's alone. A dry pool leaves the Sandbox Pending (``PoolEmpty``), counted
as a waiting claim by the pool (creation on demand), and retried as pool pods become ready.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import aiohttp
from pydantic import ValidationError

from voltgrid.api import podspec, pool
from voltgrid.api.function import Function
from voltgrid.api.sandbox import Sandbox, SandboxPhase
from voltgrid.api.sandboxtemplate import SandboxTemplate
from voltgrid.controllers import children
from voltgrid.controllers.builders import sandbox as sandbox_builder
from voltgrid.controllers.builders import status as status_builder
from voltgrid.controllers.builders.pods import PodInfo, parse_time
from voltgrid.controllers.builders.runtime import is_sandboxed, select_runtime
from voltgrid.controllers.events import NORMAL, WARNING
from voltgrid.controllers.kube import KubeApiError, core_path, group_path, voltgrid_path
from voltgrid.controllers.pools import pool_pod
from voltgrid.controllers.state import Context, Key, spec_only
from voltgrid.sandbox_claims import sign_claim

logger = logging.getLogger(__name__)

Json = dict[str, Any]
TERMINAL = frozenset({SandboxPhase.SUCCEEDED, SandboxPhase.FAILED, SandboxPhase.EXPIRED})
#: When the apiserver refused a child object for a reason that may pass, the next try.
CHILD_RETRY = timedelta(seconds=10)
#: Seconds a pool pod's agent may take to accept a claim before the pod is given up on (the gateway's).
CLAIM_CALL_TIMEOUT: Final = 5.0
#: Pods one binding tries at most: pods that refuse claims one after the other mean something is
#: wrong beyond them (a claim key the pool does not have), and burning the whole pool would not help.
MAX_CLAIM_TRIES: Final = 5
#: A Sandbox waiting on a dry pool looks again this often, should no pod event wake it first.
POOL_RETRY = timedelta(seconds=30)
PoolChanged = Callable[[Key], Awaitable[None]]


@dataclass(frozen=True)
class Claimed:
    """A pool pod a ``templateRef`` Sandbox's claim took, as recorded, and when."""

    pod: PodInfo
    at: datetime
    runtime_class_name: str | None


@dataclass(frozen=True)
class Waiting:
    """Why a ``templateRef`` Sandbox has no pod yet: its status condition, and whether it retries."""

    phase: SandboxPhase
    reason: str
    message: str
    retry: bool = True


class SandboxController:
    def __init__(
        self, ctx: Context, *, pool_changed: PoolChanged | None = None, wall: Callable[[], float] = time.time
    ) -> None:
        self.ctx = ctx
        #: Sandboxes with a pod or a deadline: (model, last status). Bounded by live sandboxes.
        self.live: dict[Key, tuple[Sandbox, Json]] = {}
        #: Sandboxes waiting for a runtime to appear.
        self.not_started: set[Key] = set()
        #: Tells the pool a ``templateRef`` Sandbox now waits for (or took) one of its pods.
        self.pool_changed = pool_changed
        #: The wall clock claims are signed with: the agent checks their age against its own.
        self.wall = wall
        #: ``templateRef`` Sandboxes being bound now (kopf runs handlers of one object one at a time,
        #: but a pool pod's readiness retries waiting Sandboxes from another handler).
        self.binding: set[Key] = set()
        #: Of those, the ones deleted meanwhile: their binding burns the pod it bound.
        self.gone: set[Key] = set()
        #: Pool pods (namespace, name) a claim of this operator is in flight for: never picked twice.
        self.claiming: set[Key] = set()
        #: The template each waiting ``templateRef`` Sandbox waits on (``ctx.pool_waiting`` by template).
        self.waits_on: dict[Key, Key] = {}

    async def on_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            if key in self.binding:
                self.gone.add(key)  # its claim is in flight: the binding burns what it bound
            self._forget(key)
            await self._burn_bound(key)
            return
        current = dict(body.get("status") or {})
        try:
            sandbox = Sandbox.model_validate(spec_only(body))
        except ValidationError as exc:
            patch = status_builder.invalid_status(
                current, generation=meta.get("generation"), message=str(exc), now=self.ctx.clock()
            )
            await self._write(key, current, {**patch, "phase": SandboxPhase.NOT_STARTED})
            return
        await self.reconcile(sandbox, current)

    def _forget(self, key: Key) -> None:
        self.live.pop(key, None)
        self.not_started.discard(key)
        self._unwait(key)
        for kind in ("sandbox", "sandbox-delete"):
            self.ctx.scheduler.cancel((kind, *key))

    async def _burn_bound(self, key: Key) -> None:
        """A ``templateRef`` Sandbox went: its pool pod goes with it (burn after use). The pod's only
        owner is its template (see :func:`sandbox_builder.claimed_pod_patch`), so it is deleted here."""
        pod = self.ctx.pods.for_sandbox(*key)
        if pod is not None and pod.template is not None and pod.alive:
            await self._burn(pod.namespace, pod.name)

    async def reconcile(self, sandbox: Sandbox, current: Json) -> None:
        ns, name = str(sandbox.metadata.namespace), str(sandbox.metadata.name)
        key = (ns, name)
        now = self.ctx.clock()
        phase = current.get("phase")
        if phase == SandboxPhase.EXPIRED:
            await self._after_expiry(sandbox, current, now)
            return
        pod = self.ctx.pods.for_sandbox(ns, name)
        if sandbox.spec.template_ref is not None:
            expires = self._bound_expiry(sandbox, pod, current)
        else:
            started = parse_time(current.get("startedAt")) or (pod.started if pod else None)
            expires = sandbox_builder.expiry(sandbox, started)
        if expires is not None and now >= expires:
            await self.expire(sandbox, current)
            return
        if expires is not None:
            self.ctx.scheduler.schedule(("sandbox", ns, name), expires)
        if phase in TERMINAL:
            self.live.pop(key, None)
            return
        if pod is None and not current.get("podName"):
            if sandbox.spec.template_ref is not None:
                await self._bind(sandbox, current, expires)
            else:
                await self._start(sandbox, current, expires)
            return
        patch = self._from_pod(sandbox, pod, current, expires)
        self.live[key] = (sandbox, await self._write(key, current, patch))

    @staticmethod
    def _bound_expiry(sandbox: Sandbox, pod: PodInfo | None, current: Json) -> datetime | None:
        """A ``templateRef`` Sandbox's expiry: the one recorded on its pod at the binding (or in its
        status, the pod gone); before it is bound, its own ``expiresAt`` or ``ttl`` from creation (a
        Sandbox that waits that long for a pod expires unbound)."""
        if pod is not None and pod.pool_expires is not None:
            return datetime.fromtimestamp(pod.pool_expires, UTC)
        if current.get("sandboxId"):
            return parse_time(current.get("expiresAt"))
        return sandbox_builder.expiry(sandbox, None)

    # -- templateRef: binding a warm pool pod -----------------------------------------------------

    async def _bind(self, sandbox: Sandbox, current: Json, expires: datetime | None) -> None:
        ns, name = str(sandbox.metadata.namespace), str(sandbox.metadata.name)
        key = (ns, name)
        if key in self.binding:
            return  # the binding in flight writes the status
        self.binding.add(key)
        try:
            if self.ctx.pods.for_sandbox(ns, name) is None:  # not bound meanwhile by a binding now over
                await self._bind_one(sandbox, current, expires)
        finally:
            self.binding.discard(key)
            deleted = key in self.gone
            self.gone.discard(key)
        if deleted:  # the Sandbox went while its claim was in flight: what it bound goes too
            self._forget(key)
            await self._burn_bound(key)

    async def _bind_one(self, sandbox: Sandbox, current: Json, expires: datetime | None) -> None:
        ns, ref = str(sandbox.metadata.namespace), str(sandbox.spec.template_ref)
        if self.ctx.claim_key is None:
            msg = "the operator has no sandbox claim key (setting sandbox_claim_key_file); the chart mounts one"
            await self._waiting(sandbox, current, expires, Waiting(SandboxPhase.NOT_STARTED, "NoClaimKey", msg, False))
            return
        template = await self._template(ns, ref)
        if template is None:
            msg = f"SandboxTemplate {ref} not found in {ns} (or invalid); waiting for it"
            await self._waiting(sandbox, current, expires, Waiting(SandboxPhase.PENDING, "TemplateNotFound", msg))
            return
        revision = pool.template_hash(template.spec)
        tried: set[str] = set()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLAIM_CALL_TIMEOUT)) as http:
            while len(tried) < MAX_CLAIM_TRIES:
                candidates = [
                    p
                    for p in self.ctx.pods.for_template(ns, ref)
                    if p.name not in tried and (ns, p.name) not in self.claiming and p.sandbox_id and p.agent_url
                ]
                picked = pool.pick_for_claim((pool_pod(p) for p in candidates), revision)
                if picked is None:
                    break
                tried.add(picked.name)
                pod = next(p for p in candidates if p.name == picked.name)
                outcome = await self._claim(http, sandbox, template, pod)
                if isinstance(outcome, Waiting):
                    await self._waiting(sandbox, current, expires, outcome)
                    return
                if outcome is not None:
                    await self._bound(sandbox, current, outcome)
                    return
        if len(tried) >= MAX_CLAIM_TRIES:
            msg = f"{len(tried)} pods of SandboxTemplate {ref} were taken by other claimers or refused; retrying"
            await self._waiting(sandbox, current, expires, Waiting(SandboxPhase.PENDING, "ClaimFailed", msg))
            return
        msg = f"no warm sandbox of SandboxTemplate {ref} is ready; the pool makes one"
        await self._waiting(sandbox, current, expires, Waiting(SandboxPhase.PENDING, "PoolEmpty", msg))

    async def _template(self, ns: str, name: str) -> SandboxTemplate | None:
        body = await self.ctx.client.get(voltgrid_path("sandboxtemplates", ns, name))
        if body is None:
            return None
        try:
            return SandboxTemplate.model_validate(spec_only(body))
        except ValidationError:
            return None

    async def _claim(
        self, http: aiohttp.ClientSession, sandbox: Sandbox, template: SandboxTemplate, pod: PodInfo
    ) -> Claimed | Waiting | None:
        """Claim ``pod`` for ``sandbox`` and record it on the pod: the pod as recorded and the claim's
        time; None when the pod is not to be had (taken by another claimer, or refused and burnt);
        a :class:`Waiting` when the agent refused the claim's content (the Sandbox's fault: no pod
        would take it, so none is burnt)."""
        assert self.ctx.claim_key is not None and sandbox.spec.token_sha256 and pod.sandbox_id and pod.agent_url
        ns = pod.namespace
        self.claiming.add((ns, pod.name))
        try:
            env = {e.name: e.value for e in sandbox.spec.env}
            signed = sign_claim(self.ctx.claim_key, pod.sandbox_id, sandbox.spec.token_sha256, env, self.wall())
            try:
                async with http.post(pod.agent_url + "/claim", json={"claim": signed}) as answer:
                    status, text = answer.status, (await answer.text())[:300]
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                status, text = None, str(exc) or type(exc).__name__
            if status == 409:  # a gateway replica (or another claimer) won the race: its pod, left alone
                logger.info("pool pod %s/%s was claimed by another claimer; trying the next", ns, pod.name)
                return None
            if status == 400:
                msg = f"the sandbox refused the claim: {text}"
                return Waiting(SandboxPhase.NOT_STARTED, "ClaimRefused", msg, retry=False)
            if status != 200:
                logger.warning("pool pod %s/%s refused its claim (%s %s); burning it", ns, pod.name, status, text)
                await self._burn(ns, pod.name)
                return None
            claimed_at = self.ctx.clock()
            expires = sandbox_builder.bound_expiry(sandbox, template.spec, claimed_at)
            patch = sandbox_builder.claimed_pod_patch(sandbox, expires=expires, claimed_at=claimed_at)
            try:
                recorded = await self.ctx.client.patch(core_path("pods", ns, pod.name), patch)
            except KubeApiError as exc:  # claimed yet unrecorded: no gateway could serve it; burnt
                logger.warning("could not record the claim of pool pod %s/%s (%s); burning it", ns, pod.name, exc)
                await self._burn(ns, pod.name)
                return None
            if recorded is None:  # deleted under the claim
                self.ctx.pods.remove(ns, pod.name)
                return None
            bound = PodInfo.from_pod(recorded)
            self.ctx.pods.upsert(bound)
            return Claimed(bound, claimed_at, (recorded.get("spec") or {}).get("runtimeClassName"))
        finally:
            self.claiming.discard((ns, pod.name))

    async def _bound(self, sandbox: Sandbox, current: Json, claimed: Claimed) -> None:
        ns, name = str(sandbox.metadata.namespace), str(sandbox.metadata.name)
        key = (ns, name)
        pod, runtime = claimed.pod, claimed.runtime_class_name
        self._unwait(key)
        assert pod.sandbox_id and pod.pool_expires is not None and pod.template
        expires = datetime.fromtimestamp(pod.pool_expires, UTC)
        self.ctx.scheduler.schedule(("sandbox", ns, name), expires)
        patch = self._from_pod(sandbox, pod, current, expires)
        patch.update(
            {
                "podName": pod.name,
                "sandboxId": pod.sandbox_id,
                "url": sandbox_builder.sandbox_url(pod.sandbox_id),
                "startedAt": status_builder.rfc3339(claimed.at),
                "runtimeClassName": runtime,
                "sandboxed": is_sandboxed(runtime, self.ctx.runtimes.classes),
            }
        )
        self.live[key] = (sandbox, await self._write(key, current, patch))
        await self.ctx.events.post(
            self._ref(sandbox),
            NORMAL,
            "Bound",
            f"bound warm sandbox {pod.sandbox_id} (pod {pod.name}) of SandboxTemplate {pod.template}",
        )
        if self.pool_changed is not None:
            await self.pool_changed((ns, pod.template))

    async def _waiting(self, sandbox: Sandbox, current: Json, expires: datetime | None, why: Waiting) -> None:
        """No pod bound: say why; count the Sandbox as a claim waiting for the pool (creation on
        demand) and look again after :data:`POOL_RETRY` unless nothing but a new spec would help."""
        ns, name = str(sandbox.metadata.namespace), str(sandbox.metadata.name)
        key = (ns, name)
        now = self.ctx.clock()
        gen = sandbox.metadata.generation
        cond = status_builder.condition(
            current.get("conditions"), status_builder.READY, False, why.reason, why.message, generation=gen, now=now
        )
        patch: Json = {"phase": why.phase, "conditions": [cond], "observedGeneration": gen}
        if expires is not None:
            patch["expiresAt"] = status_builder.rfc3339(expires)
        if status_builder.changed(current, patch):
            await self.ctx.events.post(self._ref(sandbox), WARNING, why.reason, why.message)
        self.live[key] = (sandbox, await self._write(key, current, patch))
        if not why.retry:
            self._unwait(key)
            return
        template = (ns, str(sandbox.spec.template_ref))
        newly = self.waits_on.get(key) != template
        self._unwait(key)
        self.waits_on[key] = template
        self.ctx.pool_waiting.setdefault(template, set()).add(key)
        retry = now + POOL_RETRY
        self.ctx.scheduler.schedule(("sandbox", ns, name), retry if expires is None else min(retry, expires))
        if newly and self.pool_changed is not None:
            await self.pool_changed(template)

    def _unwait(self, key: Key) -> None:
        template = self.waits_on.pop(key, None)
        if template is None:
            return
        waiting = self.ctx.pool_waiting.get(template)
        if waiting is not None:
            waiting.discard(key)
            if not waiting:
                del self.ctx.pool_waiting[template]

    async def on_pool_pod(self, pod: PodInfo) -> None:
        """A pool pod changed: one that is ready and unclaimed may end the wait of Sandboxes on its template."""
        if not pod.ready or pod.pool_claimed or not pod.alive:
            return
        for key in sorted(self.ctx.pool_waiting.get((pod.namespace, str(pod.template)), ())):
            body = await self.ctx.client.get(voltgrid_path("sandboxes", *key))
            if body is None:
                self._unwait(key)
            else:
                await self.on_event(body, None)

    async def _burn(self, ns: str, pod: str) -> None:
        await self.ctx.client.delete(core_path("pods", ns, pod))
        self.ctx.pods.remove(ns, pod)

    async def _start(self, sandbox: Sandbox, current: Json, expires: datetime | None) -> None:
        ns, name = str(sandbox.metadata.namespace), str(sandbox.metadata.name)
        key = (ns, name)
        gen = sandbox.metadata.generation
        rt = self.ctx.runtimes
        choice = select_runtime(sandbox.spec.isolation, rt.classes, rt.nodes.values(), sandbox.spec.resources.gpu)
        now = self.ctx.clock()
        conditions = current.get("conditions")
        if not choice.runnable:
            self.not_started.add(key)
            cond = status_builder.condition(
                conditions, status_builder.READY, False, choice.reason, choice.message, generation=gen, now=now
            )
            patch: Json = {
                "phase": SandboxPhase.NOT_STARTED,
                "conditions": [cond],
                "sandboxed": False,
                "observedGeneration": gen,
            }
            if status_builder.changed(current, patch):
                await self.ctx.events.post(self._ref(sandbox), WARNING, choice.reason, choice.message)
            await self._write(key, current, patch)
            return
        self.not_started.discard(key)
        function = None
        if sandbox.spec.function_ref:
            body = await self.ctx.client.get(voltgrid_path("functions", ns, sandbox.spec.function_ref))
            if body is None:
                msg = f"functionRef {sandbox.spec.function_ref} not found in {ns}"
                cond = status_builder.condition(
                    conditions, status_builder.READY, False, "FunctionNotFound", msg, generation=gen, now=now
                )
                await self._write(
                    key, current, {"phase": SandboxPhase.NOT_STARTED, "conditions": [cond], "observedGeneration": gen}
                )
                return
            function = Function.model_validate(spec_only(body))
        pod_manifest = podspec.build_sandbox_pod(
            sandbox, runtime_class_name=choice.runtime_class_name, function=function
        )
        try:
            await children.create(
                self.ctx.client,
                "NetworkPolicy",
                group_path("networking.k8s.io/v1", "networkpolicies", ns),
                sandbox_builder.network_policy(sandbox),
            )
            created = await children.create(self.ctx.client, "Pod", core_path("pods", ns), pod_manifest)
        except children.ChildRejected as exc:
            await self._rejected(sandbox, current, exc)
            return
        pod = PodInfo.from_pod(created or pod_manifest)
        self.ctx.pods.upsert(pod)
        await self.ctx.events.post(
            self._ref(sandbox), NORMAL if choice.sandboxed else WARNING, choice.reason, choice.message
        )
        patch = self._from_pod(sandbox, pod, current, expires)
        patch.update(
            {"podName": pod.name, "runtimeClassName": choice.runtime_class_name, "sandboxed": choice.sandboxed}
        )
        self.live[key] = (sandbox, await self._write(key, current, patch))

    async def _rejected(self, sandbox: Sandbox, current: Json, exc: children.ChildRejected) -> None:
        """The apiserver refused the NetworkPolicy or the pod: NotStarted, saying so, with an Event.
        A refusal that may pass (overload) is retried after :data:`CHILD_RETRY`; any other waits for
        a new spec (its watch event reconciles again)."""
        ns, name = str(sandbox.metadata.namespace), str(sandbox.metadata.name)
        now = self.ctx.clock()
        patch = status_builder.not_ready_status(
            current, generation=sandbox.metadata.generation, reason=exc.reason, message=str(exc), now=now
        )
        patch["phase"] = SandboxPhase.NOT_STARTED
        if status_builder.changed(current, patch):
            await self.ctx.events.post(self._ref(sandbox), WARNING, exc.reason, str(exc))
        await self._write((ns, name), current, patch)
        if exc.transient:
            self.ctx.scheduler.schedule(("sandbox", ns, name), now + CHILD_RETRY)

    def _from_pod(self, sandbox: Sandbox, pod: PodInfo | None, current: Json, expires: datetime | None) -> Json:
        phase = sandbox_builder.phase_of(pod)
        if pod is None and current.get("podName"):
            phase = SandboxPhase.FAILED  # its pod was deleted by someone else: burnt, not restarted
        ok = phase == SandboxPhase.RUNNING
        reason = "Running" if ok else ("PodGone" if pod is None else f"Pod{pod.phase}")
        message = f"pod {pod.name} is {pod.phase}" if pod else "the sandbox's pod no longer exists"
        cond = status_builder.condition(
            current.get("conditions"),
            status_builder.READY,
            ok,
            reason,
            message,
            generation=sandbox.metadata.generation,
            now=self.ctx.clock(),
        )
        patch: Json = {"phase": phase, "conditions": [cond], "observedGeneration": sandbox.metadata.generation}
        endpoint = sandbox_builder.endpoint(pod)
        if endpoint:
            patch["endpoint"] = endpoint
        if pod is not None and pod.started and pod.template is None:  # a pool pod's start is not the binding
            patch["startedAt"] = status_builder.rfc3339(pod.started)
        if expires is not None:
            patch["expiresAt"] = status_builder.rfc3339(expires)
        return patch

    async def on_pod(self, pod: PodInfo) -> None:
        """A sandbox pod changed: refresh that Sandbox's status (phase, endpoint) right away."""
        key = (pod.namespace, str(pod.sandbox))
        remembered = self.live.get(key)
        if remembered is None:
            body = await self.ctx.client.get(voltgrid_path("sandboxes", *key))
            if body is not None:
                await self.on_event(body, None)
            elif pod.template is not None and pod.alive:  # its Sandbox went while no operator watched
                await self._burn(pod.namespace, pod.name)
            return
        await self.reconcile(*remembered)

    async def expire(self, sandbox: Sandbox, current: Json) -> None:
        ns, name = str(sandbox.metadata.namespace), str(sandbox.metadata.name)
        self._unwait((ns, name))
        pod = self.ctx.pods.for_sandbox(ns, name)
        if pod is not None:
            await self.ctx.client.delete(core_path("pods", ns, pod.name))
            self.ctx.pods.remove(ns, pod.name)
        await self.ctx.client.delete(
            group_path("networking.k8s.io/v1", "networkpolicies", ns, sandbox_builder.network_policy_name(name))
        )
        now = self.ctx.clock()
        cond = status_builder.condition(
            current.get("conditions"),
            status_builder.READY,
            False,
            "Expired",
            "the sandbox reached its expiry",
            generation=sandbox.metadata.generation,
            now=now,
        )
        patch: Json = {"phase": SandboxPhase.EXPIRED, "conditions": [cond], "expiresAt": status_builder.rfc3339(now)}
        if current.get("expiresAt"):
            patch["expiresAt"] = current["expiresAt"]
        patch.pop("endpoint", None)
        current = await self._write((ns, name), current, patch)
        await self.ctx.events.post(self._ref(sandbox), NORMAL, "Expired", "sandbox expired; its pod was deleted")
        await self._after_expiry(sandbox, current, now)

    async def _after_expiry(self, sandbox: Sandbox, current: Json, now: datetime) -> None:
        ns, name = str(sandbox.metadata.namespace), str(sandbox.metadata.name)
        self.live.pop((ns, name), None)
        if not sandbox.spec.delete_after_expiry:
            return
        expired_at = parse_time(current.get("expiresAt")) or now
        when = sandbox_builder.delete_after(expired_at, self.ctx.settings.sandbox_delete_grace)
        if now >= when:
            await self.ctx.client.delete(voltgrid_path("sandboxes", ns, name))
        else:
            self.ctx.scheduler.schedule(("sandbox-delete", ns, name), when)

    async def on_deadline(self, kind: str, key: Key) -> None:
        body = await self.ctx.client.get(voltgrid_path("sandboxes", *key))
        if body is None:
            return
        await self.on_event(body, None)

    async def retry_not_started(self) -> None:
        for key in list(self.not_started):
            body = await self.ctx.client.get(voltgrid_path("sandboxes", *key))
            if body is None:
                self.not_started.discard(key)
            else:
                await self.on_event(body, None)

    async def _write(self, key: Key, current: Json, patch: Json) -> Json:
        if not status_builder.changed(current, patch):
            return current
        await self.ctx.client.patch(voltgrid_path("sandboxes", *key) + "/status", {"status": patch})
        return {**current, **patch}

    @staticmethod
    def _ref(sandbox: Sandbox) -> Json:
        meta = sandbox.metadata
        return {
            "apiVersion": sandbox.api_version,
            "kind": "Sandbox",
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
        }
