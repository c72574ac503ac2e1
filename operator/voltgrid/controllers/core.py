"""The operator's engine: the three controllers, the pod index, ONE scheduler and ONE sweep.

kopf delivers the watch events of Sandboxes, Sessions, pods, nodes and RuntimeClasses; Functions,
the objects counted in the 100,000s, come through the operator's own informer (see
:mod:`voltgrid.controllers.informer` for why). This module turns pod events into index updates, idle
deadlines and "dirty" marks, and runs the background tasks every operator replica has (never one
per object): the Function informer, the deadline scheduler and the sweep that batches status
refreshes of the Functions and Sessions whose pods changed. With kopf peering, only the active
replica acts: one loop reads the peering object every ``PEERING_CHECK_S`` and opens or closes
``gate``, which the informer's workers, the sweep and the deadlines all consult; a replica that
becomes active re-lists the pods and the Functions first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final

import aiohttp

from voltgrid.api import constants, podspec
from voltgrid.controllers.builders.pods import PodInfo, parse_time, reapable
from voltgrid.controllers.events import NORMAL
from voltgrid.controllers.functions import FunctionController
from voltgrid.controllers.informer import Informer
from voltgrid.controllers.kube import KubeApiError, core_path, group_path
from voltgrid.controllers.pools import DEADLINE_KIND as POOL_DEADLINE
from voltgrid.controllers.pools import PoolController
from voltgrid.controllers.sandboxes import SandboxController
from voltgrid.controllers.scheduler import Deadline
from voltgrid.controllers.sessions import SessionController
from voltgrid.controllers.state import Context

logger = logging.getLogger(__name__)

MANAGED_SELECTOR: Final = f"{constants.LABEL_MANAGED}={podspec.MANAGED}"
PEERING_API: Final = "kopf.dev/v1"
#: Seconds between checks of the peering object for who is active (HA handover latency, with
#: kopf's peer lifetime).
PEERING_CHECK_S: Final = 2.0
#: At start, how long and how often to wait for kopf to list this replica in the peering object.
PEERING_REGISTRATION_WAIT_S: Final = 30.0
PEERING_REGISTRATION_POLL_S: Final = 0.25
#: Function reconciles (status writes) in flight at once.
FUNCTION_WORKERS: Final = 32
#: Functions whose latest state waits for a worker; beyond it the Function watch waits (flat memory).
FUNCTION_MAX_PENDING: Final = 5000


class Controllers:
    def __init__(self, ctx: Context, *, identity: str | None = None, priority: int = 0) -> None:
        self.ctx = ctx
        self.functions = FunctionController(ctx)
        self.pools = PoolController(ctx)
        self.sandboxes = SandboxController(ctx, pool_changed=self.pools.reconcile)
        self.sessions = SessionController(ctx)
        self.identity = identity
        self.priority = priority
        #: Open while this replica is the active one: Function work waits on it. A standalone
        #: operator is always active; a peering one opens it once the peering object says so.
        self.gate = asyncio.Event()
        if not ctx.settings.peering:
            self.gate.set()
        self.function_informer = Informer(
            ctx.client,
            ctx.served_paths("functions"),
            self.functions.on_event,
            served=ctx.settings.serves if ctx.settings.watches_cluster else None,
            gate=self.gate,
            workers=FUNCTION_WORKERS,
            max_pending=FUNCTION_MAX_PENDING,
            name="functions",
            metrics=ctx.metrics,
        )
        ctx.metrics.watch_active(self.gate.is_set)

    # -- startup / adoption --------------------------------------------------------------------

    async def resync(self) -> None:
        """LIST what exists (runtime classes, nodes, Voltgrid pods) into the indexes: adoption
        after a restart starts here, before kopf delivers the first object event."""
        client = self.ctx.client
        for rc in await client.list(group_path("node.k8s.io/v1", "runtimeclasses")):
            self.ctx.runtimes.set_class(rc["metadata"]["name"], rc)
        for node in await client.list(core_path("nodes")):
            self.ctx.runtimes.set_node(node["metadata"]["name"], node["metadata"].get("labels") or {})
        pods = [PodInfo.from_pod(p) for p in await client.list(core_path("pods"), {"labelSelector": MANAGED_SELECTOR})]
        pods = [p for p in pods if self.ctx.settings.serves(p.namespace)]
        self.ctx.pods.replace_all(pods)
        for pod in pods:
            self._schedule_reap(pod)
            if pod.function:
                self.ctx.dirty_functions.add((pod.namespace, pod.function))
        logger.info(
            "adopted %d pods; %d runtime classes, %d nodes",
            len(pods),
            len(self.ctx.runtimes.classes),
            len(self.ctx.runtimes.nodes),
        )

    # -- watch events ---------------------------------------------------------------------------

    async def on_pod(self, body: Mapping[str, Any], event_type: str | None) -> None:
        pod = PodInfo.from_pod(body)
        if event_type == "DELETED":
            self.ctx.pods.remove(pod.namespace, pod.name)
            self.ctx.scheduler.cancel(("pod", pod.namespace, pod.name))
            pod = dataclasses.replace(pod, deleting=True)
        else:
            self.ctx.pods.upsert(pod)
            self._schedule_reap(pod)
        if pod.template:
            await self.pools.on_pod(pod)
            await self.sandboxes.on_pool_pod(pod)
        if pod.sandbox:  # a Sandbox's own pod, or a pool pod bound to a Sandbox (templateRef)
            await self.sandboxes.on_pod(pod)
        if pod.template or pod.sandbox:
            return
        if pod.function:
            self.ctx.dirty_functions.add((pod.namespace, pod.function))
            await self.sessions.on_pod(pod)

    async def on_runtime_class(self, name: str, body: Mapping[str, Any] | None) -> None:
        before = self.ctx.runtimes.available()
        self.ctx.runtimes.set_class(name, body)
        await self._runtimes_changed(before)

    async def on_node(self, name: str, labels: Mapping[str, str] | None) -> None:
        before = self.ctx.runtimes.available()
        if self.ctx.runtimes.set_node(name, labels):
            await self._runtimes_changed(before)

    async def _runtimes_changed(self, before: frozenset[str]) -> None:
        if self.ctx.runtimes.available() == before:
            return
        logger.info("available runtime classes now %s", sorted(self.ctx.runtimes.available()))
        await self.sandboxes.retry_not_started()
        for key in list(self.pools.templates):
            await self.pools.reconcile(key)
        self.function_informer.resync()  # every Function's runtime choice may differ now

    # -- deadlines ------------------------------------------------------------------------------

    def _schedule_reap(self, pod: PodInfo) -> None:
        key = ("pod", pod.namespace, pod.name)
        since = pod.last_active or pod.created
        if not pod.alive or not pod.claimed or pod.keep_warm or pod.idle_timeout is None or since is None:
            self.ctx.scheduler.cancel(key)
            return
        grace = self.ctx.settings.reap_grace
        self.ctx.scheduler.schedule(key, since + timedelta(seconds=pod.idle_timeout + grace, microseconds=1))

    async def on_deadline(self, key: Deadline) -> None:
        kind, namespace, name = key
        if kind in ("sandbox", "sandbox-delete"):
            await self.sandboxes.on_deadline(kind, (namespace, name))
        elif kind == "session":
            await self.sessions.on_deadline((namespace, name))
        elif kind == "pod":
            await self._reap(namespace, name)
        elif kind == POOL_DEADLINE:
            await self.pools.on_deadline((namespace, name))

    async def _reap(self, namespace: str, name: str) -> None:
        pod = self.ctx.pods.get(namespace, name)
        if pod is None:
            return
        if not reapable(pod, self.ctx.clock(), self.ctx.settings.reap_grace):
            self._schedule_reap(pod)
            return
        logger.info("releasing idle instance %s/%s (session %s)", namespace, name, pod.session)
        await self.ctx.client.delete(core_path("pods", namespace, name))
        self.ctx.pods.remove(namespace, name)
        if pod.function:
            self.ctx.dirty_functions.add((namespace, pod.function))
            await self.ctx.events.post(
                {"apiVersion": constants.API_VERSION, "kind": "Function", "name": pod.function, "namespace": namespace},
                NORMAL,
                "InstanceReleased",
                f"instance {name} of session {pod.session} idle; released",
            )

    # -- the shared sweep ---------------------------------------------------------------------

    async def is_active(self) -> bool:
        """Standalone: always. With peering: no live peer of equal or higher priority (kopf pauses
        every replica on a priority tie, so replicas must get distinct priorities)."""
        return self._active_in(await self._read_peering())

    async def _read_peering(self) -> Mapping[str, Any] | None:
        name = self.ctx.settings.peering
        if not name:
            return None
        ns = self.ctx.settings.peering_namespace
        plural = "kopfpeerings" if ns else "clusterkopfpeerings"
        return await self.ctx.client.get(group_path(PEERING_API, plural, ns, name))

    def _active_in(self, body: Mapping[str, Any] | None) -> bool:
        now = self.ctx.clock()
        for peer_id, info in ((body or {}).get("status") or {}).items():
            if peer_id == self.identity or not isinstance(info, dict):
                continue
            seen = parse_time(info.get("lastseen"))
            alive = seen is not None and (now - seen.replace(tzinfo=seen.tzinfo or now.tzinfo)).total_seconds() < float(
                info.get("lifetime", 60)
            )
            if alive and int(info.get("priority", 0)) >= self.priority:
                return False
        return True

    async def _registered_peering(self) -> Mapping[str, Any] | None:
        """The peering object once it lists this replica (kopf registers it as it starts), or as
        it is after ``PEERING_REGISTRATION_WAIT_S``. Deciding earlier could miss a peer starting at
        the same moment (a Deployment's replicas do), and both would act until the next check;
        deciding after its own entry is written, of two replicas at least one sees the other."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PEERING_REGISTRATION_WAIT_S
        while True:
            body = await self._read_peering()
            if body is None or self.identity in (body.get("status") or {}) or loop.time() >= deadline:
                return body
            await asyncio.sleep(PEERING_REGISTRATION_POLL_S)

    async def run_functions(self) -> None:
        """Follow the Functions until cancelled. With peering, their work waits until this replica
        is the active one, checked every ``PEERING_CHECK_S`` (the sweep is too slow for a handover)."""
        if not self.ctx.settings.peering:
            await self.function_informer.run()
            return
        if self._active_in(await self._registered_peering()):
            self.gate.set()
        async with asyncio.TaskGroup() as group:
            group.create_task(self.function_informer.run())
            group.create_task(self._follow_peering())

    async def _follow_peering(self) -> None:
        while True:
            await asyncio.sleep(PEERING_CHECK_S)
            try:
                await self.update_gate()
            except (KubeApiError, aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("cannot read the peering object (%r); next check in %ss", exc, PEERING_CHECK_S)

    async def update_gate(self) -> bool:
        """Open the gate when this replica is the active one (catching up on what others did when it
        just became so: pods and Functions relisted), close it otherwise; whether it is open."""
        if not await self.is_active():
            self.gate.clear()
            return False
        if not self.gate.is_set():
            await self.resync()
            self.function_informer.resync()
            self.gate.set()
        return True

    async def sweep_once(self) -> None:
        if not self.gate.is_set():  # a standby: the active replica does this work
            return
        functions, self.ctx.dirty_functions = self.ctx.dirty_functions, set()
        for key in functions:
            await self.functions.refresh(key)
        sessions, self.ctx.dirty_sessions = self.ctx.dirty_sessions, set()
        for key in sessions:
            await self.sessions.refresh(key)

    async def run_sweep(self) -> None:
        while True:
            await asyncio.sleep(self.ctx.settings.sweep_interval)
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("sweep failed; next pass in %ss", self.ctx.settings.sweep_interval)

    async def run_scheduler(self) -> None:
        await self.ctx.scheduler.run(self._deadline_when_active)

    async def _deadline_when_active(self, key: Deadline) -> None:
        if self.gate.is_set():
            await self.on_deadline(key)
        else:
            self.ctx.scheduler.schedule(key, self.ctx.clock() + timedelta(seconds=self.ctx.settings.sweep_interval))
