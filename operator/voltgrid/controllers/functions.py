"""Function controller: runtime choice, status, warm pools and ``minInstances``.

Events come from the operator's own informer (:mod:`voltgrid.controllers.informer`), not kopf. A
Function event (create, update, relist) costs one reconcile: pick the runtime, size the pool, write
the status only if it says something new. The watch event of that status write itself is recognised
by its resourceVersion and skipped without a reconcile (at 100,000 Functions it would double the
work). A Function without pods and without a pool is then forgotten: nothing periodic, nothing in
memory. Functions WITH pods are remembered (spec and last status) so that pod changes, batched by the
shared sweep, refresh their counts without re-reading them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from pydantic import ValidationError

from voltgrid.api import podspec
from voltgrid.api.function import Function
from voltgrid.controllers import children
from voltgrid.controllers.builders import status as status_builder
from voltgrid.controllers.builders.pods import PodInfo, count, plan_pool
from voltgrid.controllers.builders.runtime import RuntimeChoice, select_runtime
from voltgrid.controllers.events import NORMAL, WARNING, object_ref
from voltgrid.controllers.kube import core_path, voltgrid_path
from voltgrid.controllers.state import Context, Key, key_of, spec_only

logger = logging.getLogger(__name__)

Json = dict[str, Any]

#: Own status writes whose watch event has not arrived yet that are remembered (oldest dropped first).
MAX_PENDING_ECHOES: Final = 10_000


class FunctionController:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        #: Functions that have pods or a pool: (model, last status written or read).
        self.active: dict[Key, tuple[Function, Json]] = {}
        #: resourceVersion of each own status write, until its watch event comes back.
        self._echoes: dict[Key, str] = {}

    async def on_event(self, body: Mapping[str, Any], event_type: str | None) -> None:
        meta = body.get("metadata") or {}
        key = key_of(body)
        echo = self._echoes.pop(key, None)
        if event_type == "MODIFIED" and echo is not None and echo == meta.get("resourceVersion"):
            # our own status write coming back: it holds exactly what the last reconcile computed
            self.ctx.metrics.own_events_skipped.labels(resource="functions").inc()
            return
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            self.active.pop(key, None)  # its pods are garbage-collected through owner references
            return
        generation = meta.get("generation")
        current = dict(body.get("status") or {})
        try:
            fn = Function.model_validate(spec_only(body))
        except ValidationError as exc:
            await self._invalid(body, current, generation, str(exc))
            return
        await self.reconcile(fn, current)

    async def _invalid(self, body: Mapping[str, Any], current: Json, generation: int | None, why: str) -> None:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        patch = status_builder.invalid_status(current, generation=generation, message=why, now=self.ctx.clock())
        if status_builder.changed(current, patch):
            await self.ctx.client.patch(voltgrid_path("functions", ns, name) + "/status", {"status": patch})
            await self.ctx.events.post(object_ref(dict(body), "Function"), WARNING, status_builder.REASON_INVALID, why)

    def choose(self, fn: Function) -> RuntimeChoice:
        rt = self.ctx.runtimes
        return select_runtime(fn.spec.isolation, rt.classes, rt.nodes.values(), fn.spec.resources.gpu)

    async def reconcile(self, fn: Function, current: Json) -> None:
        ns, name = str(fn.metadata.namespace), str(fn.metadata.name)
        key = (ns, name)
        choice = self.choose(fn)
        pods = self.ctx.pods.for_function(ns, name)
        if choice.runnable:
            try:
                pods = await self._size_pool(fn, choice, pods)
            except children.ChildRejected as exc:
                await self._rejected(fn, current, exc)
                return
        patch = status_builder.function_status(
            current,
            generation=fn.metadata.generation,
            choice=choice,
            counts=count(pods),
            url=self.ctx.settings.invoke_url(ns, name),
            now=self.ctx.clock(),
            triggers=[t.name for t in fn.spec.triggers],
        )
        if status_builder.changed(current, patch):
            written = await self.ctx.client.patch(voltgrid_path("functions", ns, name) + "/status", {"status": patch})
            if written is None:  # deleted meanwhile
                self.active.pop(key, None)
                return
            self.ctx.metrics.status_writes.labels(resource="functions").inc()
            self._expect_echo(key, written, fn.metadata.generation)
            # An Event when readiness changes or cannot be had; not for every new Ready Function
            # (100k Functions would mean 100k Events).
            before: Json = next(
                (x for x in current.get("conditions") or [] if x.get("type") == status_builder.READY), {}
            )
            if before.get("reason") != patch["conditions"][0]["reason"] and (before or not choice.runnable):
                kind = NORMAL if choice.runnable else WARNING
                await self.ctx.events.post(
                    self._ref(fn), kind, patch["conditions"][0]["reason"], patch["conditions"][0]["message"]
                )
            current = {**current, **patch}
        scaling = fn.spec.scaling
        if pods or scaling.warm_pool or scaling.min_instances:
            self.active[key] = (fn, current)
        else:
            self.active.pop(key, None)

    async def _rejected(self, fn: Function, current: Json, exc: children.ChildRejected) -> None:
        """The apiserver refused a warm pod: Ready=False saying so, with an Event (the gateway's pods
        of this Function would be refused alike). A refusal that may pass is raised again, for the
        work queue's retry with backoff; any other waits for a new spec."""
        ns, name = str(fn.metadata.namespace), str(fn.metadata.name)
        patch = status_builder.not_ready_status(
            current, generation=fn.metadata.generation, reason=exc.reason, message=str(exc), now=self.ctx.clock()
        )
        if status_builder.changed(current, patch):
            written = await self.ctx.client.patch(voltgrid_path("functions", ns, name) + "/status", {"status": patch})
            if written is not None:
                self.ctx.metrics.status_writes.labels(resource="functions").inc()
                self._expect_echo((ns, name), written, fn.metadata.generation)
            await self.ctx.events.post(self._ref(fn), WARNING, exc.reason, str(exc))
        if exc.transient:
            raise exc

    async def _size_pool(self, fn: Function, choice: RuntimeChoice, pods: list[PodInfo]) -> list[PodInfo]:
        plan = plan_pool(fn.spec.scaling, pods)
        ns = str(fn.metadata.namespace)
        for name in plan.delete:
            await self.ctx.client.delete(core_path("pods", ns, name))
            self.ctx.pods.remove(ns, name)
        for _ in range(plan.create_warm):
            manifest = podspec.build_instance_pod(
                fn, podspec.new_session_id(), role=podspec.Role.WARM, runtime_class_name=choice.runtime_class_name
            )
            created = await children.create(self.ctx.client, "Pod", core_path("pods", ns), manifest)
            # Index it now, before its watch event: the next reconcile must not create it again.
            self.ctx.pods.upsert(PodInfo.from_pod(created or manifest))
        if plan.create_warm:
            await self.ctx.events.post(
                self._ref(fn), NORMAL, "WarmPool", f"created {plan.create_warm} warm instance(s)"
            )
        return self.ctx.pods.for_function(ns, str(fn.metadata.name))

    async def refresh(self, key: Key) -> None:
        """Re-reconcile after its pods changed (called by the shared sweep, batched)."""
        remembered = self.active.get(key)
        if remembered is None:
            body = await self.ctx.client.get(voltgrid_path("functions", key[0], key[1]))
            if body is None:
                return
            await self.on_event(body, None)
            return
        fn, current = remembered
        await self.reconcile(fn, current)

    def _expect_echo(self, key: Key, written: Json, generation: int | None) -> None:
        """Remember the version our status write produced, unless the spec changed under it (then
        its watch event carries a newer generation and must be reconciled)."""
        meta = written.get("metadata") or {}
        if meta.get("generation") != generation or not meta.get("resourceVersion"):
            return
        if len(self._echoes) >= MAX_PENDING_ECHOES:
            del self._echoes[next(iter(self._echoes))]
        self._echoes[key] = str(meta["resourceVersion"])

    @staticmethod
    def _ref(fn: Function) -> Json:
        meta = fn.metadata
        return {
            "apiVersion": fn.api_version,
            "kind": "Function",
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
        }
