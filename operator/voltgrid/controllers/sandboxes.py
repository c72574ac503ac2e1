"""Sandbox controller: one pod per Sandbox, on a sandboxed runtime or not at all.

On the first reconcile the runtime is chosen by policy; none available (and no opt-in) leaves the
Sandbox NotStarted with a ``NoSandboxRuntime`` condition and an Event, and it is retried when the
cluster's RuntimeClasses or nodes change. Otherwise its egress NetworkPolicy is created BEFORE its
pod, so the pod never runs unconfined. Phase and endpoint follow the pod's watch events. Expiry
(``ttl``/``expiresAt``) and deletion after expiry are deadlines in the shared scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from voltgrid.api import podspec
from voltgrid.api.function import Function
from voltgrid.api.sandbox import Sandbox, SandboxPhase
from voltgrid.controllers import children
from voltgrid.controllers.builders import sandbox as sandbox_builder
from voltgrid.controllers.builders import status as status_builder
from voltgrid.controllers.builders.pods import PodInfo, parse_time
from voltgrid.controllers.builders.runtime import select_runtime
from voltgrid.controllers.events import NORMAL, WARNING
from voltgrid.controllers.kube import core_path, group_path, voltgrid_path
from voltgrid.controllers.state import Context, Key, spec_only

logger = logging.getLogger(__name__)

Json = dict[str, Any]
TERMINAL = frozenset({SandboxPhase.SUCCEEDED, SandboxPhase.FAILED, SandboxPhase.EXPIRED})
#: When the apiserver refused a child object for a reason that may pass, the next try.
CHILD_RETRY = timedelta(seconds=10)


class SandboxController:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        #: Sandboxes with a pod or a deadline: (model, last status). Bounded by live sandboxes.
        self.live: dict[Key, tuple[Sandbox, Json]] = {}
        #: Sandboxes waiting for a runtime to appear.
        self.not_started: set[Key] = set()

    async def on_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            self._forget(key)
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
        for kind in ("sandbox", "sandbox-delete"):
            self.ctx.scheduler.cancel((kind, *key))

    async def reconcile(self, sandbox: Sandbox, current: Json) -> None:
        ns, name = str(sandbox.metadata.namespace), str(sandbox.metadata.name)
        key = (ns, name)
        now = self.ctx.clock()
        phase = current.get("phase")
        if phase == SandboxPhase.EXPIRED:
            await self._after_expiry(sandbox, current, now)
            return
        pod = self.ctx.pods.for_sandbox(ns, name)
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
            await self._start(sandbox, current, expires)
            return
        patch = self._from_pod(sandbox, pod, current, expires)
        self.live[key] = (sandbox, await self._write(key, current, patch))

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
        if pod is not None and pod.started:
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
            return
        await self.reconcile(*remembered)

    async def expire(self, sandbox: Sandbox, current: Json) -> None:
        ns, name = str(sandbox.metadata.namespace), str(sandbox.metadata.name)
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
