"""Placement: which instance serves a request, starting or waking one when needed.

A session is found by its key (header, cookie, MCP id) in the registry; an unknown but well-formed
id is a *returning* session (its replica died, or it expired): its instance is looked up with one
LIST by session label, and started for that id if none exists, so it gets its storage back.
New sessions take a warm instance this replica owns, or get an id minted here and a cold start.
Cold starts wait in a bounded per-function queue; concurrent wakes of one session share one start.
Claiming a warm instance writes its first activity checkpoint at once, in the background (the
operator then counts it as in use and tops its pool up); later checkpoints are the lifecycle's.

Every instance a session gets is a *seat* granted by the Function's budget
(:mod:`voltgrid.gateway.budget`), which one replica holds for the whole gateway: so
``maxInstances`` and ``sessionsPerInstance`` hold across replicas and under bursts. The registry
holds only the sessions this replica is authoritative for; the passive copies it keeps for another
replica (:class:`BackupCopy`) live apart in :attr:`SessionManager.backups`, where nothing fires,
lists or counts them.

What this replica knows about each instance it serves is ONE :class:`InstanceState`, owned by the
manager and changed only through its methods (adopt, forget, a request's start and end, a
checkpoint): no parallel dicts that the request path and the lifecycle could update out of step.
The sessions bound to an instance are not counted there but read from the registry's index (the
one place a binding is written), so seats and sessions cannot disagree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any

from voltgrid.api.function import Affinity
from voltgrid.backends.base import Instance, InstanceBackend, InstanceStartError
from voltgrid.gateway.budget import Budgets
from voltgrid.gateway.errors import GatewayError, bad_request, not_found, unavailable
from voltgrid.gateway.functions import FunctionCatalog, FunctionEntry
from voltgrid.gateway.metrics import GatewayMetrics
from voltgrid.gateway.proxy import Traffic
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.gateway.warm import WarmPools, mint_owned_id
from voltgrid.registry.ids import is_learned_key, is_session_id, mint_session_id
from voltgrid.registry.ownership import Membership
from voltgrid.registry.records import SessionRecord, scoped_key
from voltgrid.registry.scheduler import DeadlineScheduler
from voltgrid.registry.store import SessionRegistry

logger = logging.getLogger(__name__)

#: Scheduler keys of session-less instances start with this (session keys cannot contain NUL).
INSTANCE_TIMER_PREFIX = "\x00i:"


@dataclass(slots=True)
class BackupCopy:
    """A passive copy of a learned binding (MCP id -> instance), kept by the owner's runner-up.

    It is data only: no timer but its expiry, no seat, no Session API row. It becomes a session
    record only when this replica becomes the key's owner (:meth:`SessionManager.promote`).
    """

    key: str
    function: str
    storage_id: str
    instance: Instance | None
    idle_timeout: float
    expires_at: float
    principal: str | None


@dataclass(slots=True)
class InstanceState:
    """This replica's view of one instance it serves; only :class:`SessionManager` changes it.

    ``inflight`` counts the session-less requests (affinity None) on it; session requests are
    counted on their session's record. ``last_active`` is the loop time the last session-less
    request ended (None until there was one); ``checkpointed`` the loop time of the activity its
    last checkpoint recorded.
    """

    instance: Instance
    inflight: int = 0
    last_active: float | None = None
    checkpointed: float = float("-inf")


class SessionManager:
    """Sessions, instances and placement for one gateway replica."""

    def __init__(
        self,
        settings: GatewaySettings,
        backend: InstanceBackend,
        catalog: FunctionCatalog,
        membership: Membership,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.catalog = catalog
        self.membership = membership
        self.metrics = metrics
        self.registry = SessionRegistry(settings.shards)
        self._instances: dict[str, InstanceState] = {}
        self._waking: dict[str, asyncio.Future[Instance]] = {}
        self._queued: dict[str, int] = {}
        self.releasing: dict[str, asyncio.Task[None]] = {}
        self.backups: dict[str, BackupCopy] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.budget = Budgets(settings, backend, catalog, membership, local_seats=self.seats, spawn=self.spawn)
        self.warm = WarmPools(
            backend,
            membership,
            self.spawn,
            manage=settings.manage_warm_pool,
            discovery_interval=settings.warm_discovery_interval,
        )
        # Set by the lifecycle, which owns the timers (it needs the manager, hence late binding).
        self.scheduler: DeadlineScheduler[str] | None = None
        #: The loop the gateway runs on, set while it runs (:meth:`now` runs several times per
        #: request, and asking asyncio for the running loop costs a getpid system call on 3.11).
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- plumbing -----------------------------------------------------------------------------
    def now(self) -> float:
        return (self.loop or asyncio.get_running_loop()).time()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a background job owned by the manager (cancelled on close, never leaked)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self.loop = None
        for task in list(self._tasks) + list(self.releasing.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *self.releasing.values(), return_exceptions=True)
        for fut in self._waking.values():
            fut.cancel()

    def is_waking(self, key: str) -> bool:
        """Whether an instance is being found or started for the session ``key``."""
        return key in self._waking

    def schedule(self, key: str, deadline: float) -> None:
        if self.scheduler is not None:
            self.scheduler.schedule(key, deadline)

    def fn(self, key: str) -> FunctionEntry:
        entry = self.catalog.get(key)
        if entry is None:
            raise not_found(f"function {key} is not served here", "function_not_found")
        return entry

    # -- sessions -----------------------------------------------------------------------------
    def create_session(
        self,
        fn: FunctionEntry,
        key: str,
        *,
        storage_id: str | None = None,
        idle_timeout: float | None = None,
        max_lifetime: float | None = None,
    ) -> SessionRecord:
        now = self.now()
        record = self.registry.create(
            key,
            fn.key,
            now=now,
            storage_id=storage_id,
            idle_timeout=idle_timeout if idle_timeout is not None else fn.idle_timeout,
            max_lifetime=max_lifetime if max_lifetime is not None else fn.max_lifetime,
        )
        self.schedule(record.rkey, record.due())
        return record

    def session_for(
        self, fn: FunctionEntry, key: str, principal: str | None = None, admit: Callable[[], None] | None = None
    ) -> SessionRecord:
        """The session a request's key names; a well-formed unknown id is a returning session
        (``admit`` is called before one is created: the per-client mint limit).

        A session created by a JWT principal is not found for any other caller."""
        record = self.registry.find(fn.key, key)
        if record is not None:
            if record.principal is not None and record.principal != principal:
                raise not_found(f"session {key!r} not found", "session_not_found")
            return record
        if fn.affinity is Affinity.MCP:
            if not is_learned_key(key):
                raise bad_request("malformed MCP session id", "bad_session_id")
            promoted = self.promote(fn.key, key)
            if promoted is not None:
                return self.session_for(fn, key, principal)
            # MCP ids are minted by the instance: one this gateway never saw cannot be woken.
            raise not_found(f"unknown MCP session {key!r}; initialize a new one", "session_not_found")
        if fn.affinity is Affinity.A2A:
            # A client may open a context under an id of its choosing: a new session keyed by it,
            # whose storage directory gets an id minted here (a context id is not a path segment).
            if not is_learned_key(key):
                raise bad_request("malformed A2A context id", "bad_session_id")
            promoted = self.promote(fn.key, key)
            if promoted is not None:
                return self.session_for(fn, key, principal)
            if admit is not None:
                admit()
            record = self.create_session(fn, key, storage_id=mint_session_id())
            record.principal = principal
            return record
        if not is_session_id(key):
            raise bad_request(
                "session ids are lowercase letters, digits and '-', at most 63 characters", "bad_session_id"
            )
        if admit is not None:
            admit()
        record = self.create_session(fn, key)
        record.principal = principal
        return record

    def promote(self, function: str, key: str) -> SessionRecord | None:
        """Turn the backup copy of ``key`` into the authoritative record (this replica owns it now)."""
        backup = self.backups.pop(scoped_key(function, key), None)
        now = self.now()
        if backup is None or backup.expires_at <= now or self.registry.find(function, key) is not None:
            return None
        record = self.registry.create(
            key,
            backup.function,
            now=now,
            storage_id=backup.storage_id,
            idle_timeout=backup.idle_timeout,
            max_lifetime=backup.expires_at - now,
        )
        record.principal = backup.principal
        if backup.instance is not None:
            self.bind(record, backup.instance)
        self.schedule(record.rkey, record.due())
        return record

    def seats(self, function: str) -> dict[str, int]:
        """Sessions of ``function`` held here, by the instance they are bound to (budget rebuilds)."""
        seats: dict[str, int] = {}
        for record in self.registry.by_function(function):
            if record.instance is not None:
                seats[record.instance] = seats.get(record.instance, 0) + 1
        return seats

    async def new_session(self, fn: FunctionEntry, principal: str | None = None) -> SessionRecord:
        """A brand-new session: on a warm instance this replica owns, else with an id minted here."""
        warm = await self.claim_warm(fn) if fn.sessions_per_instance == 1 else None
        if warm is not None:
            record = self.create_session(fn, warm.session)
            self.bind(record, warm)
            self.spawn(self.budget.claimed(fn.key, warm))
        else:
            record = self.create_session(fn, mint_owned_id(self.membership))
        record.principal = principal
        return record

    async def claim_warm(self, fn: FunctionEntry) -> Instance | None:
        """A warm instance of ``fn`` this replica owns, now in use here: from the known pool, else
        from one LIST of the operator's warm pods; its first checkpoint is written in the background."""
        warm = self.warm.claim(fn)
        if warm is None and fn.warm_pool and not self.warm.managed:
            await self.warm.discover(fn, self.instance_ids())
            warm = self.warm.claim(fn)
        if warm is not None:
            self.adopt_instance(warm)
            self.metrics.warm_claims.labels(fn.key).inc()
            self.spawn(self.checkpoint(warm, self.now()))
        return warm

    async def checkpoint(self, instance: Instance, active: float) -> None:
        """Record on the instance that it was active at loop time ``active`` (see the lifecycle)."""
        wall = time.time() - (self.now() - active)
        try:
            await self.backend.checkpoint(instance, wall)
        except Exception:
            logger.exception("checkpointing instance %s failed", instance.id)
            return
        state = self._instances.get(instance.id)
        if state is not None:
            state.checkpointed = max(active, state.checkpointed)

    def bind(self, record: SessionRecord, instance: Instance) -> None:
        self.adopt_instance(instance)
        if record.instance is not None:
            self.unbind(record)
        self.registry.bind(record, instance.id, self.now())
        self.metrics.function_usage(record.function).held.start(record.bound_since)
        self.schedule(record.rkey, record.due())

    def unbind(self, record: SessionRecord) -> str | None:
        since = record.bound_since
        instance = self.registry.unbind(record, self.now())
        if instance is not None:
            self.metrics.function_usage(record.function).held.stop(since, self.now())
        return instance

    def begin(self, record: SessionRecord) -> None:
        """A request of the session starts (metered as active time from the first in flight)."""
        now = self.now()
        if record.inflight == 0:
            self.metrics.function_usage(record.function).active.start(now)
        self.registry.begin(record, now)

    def end(self, record: SessionRecord, traffic: Traffic) -> None:
        now = self.now()
        since = record.active_since
        self.registry.end(record, now, traffic.bytes_in, traffic.bytes_out)
        if record.inflight == 0:
            self.metrics.function_usage(record.function).active.stop(since, now)

    def adopt_instance(self, instance: Instance) -> InstanceState:
        """The instance's record here, created (and counted) when it is new to this replica."""
        state = self._instances.get(instance.id)
        if state is None:
            state = self._instances[instance.id] = InstanceState(instance)
            self.metrics.instances.labels(instance.function).inc()
        return state

    def instance(self, instance_id: str) -> Instance | None:
        state = self._instances.get(instance_id)
        return state.instance if state is not None else None

    def instance_state(self, instance_id: str) -> InstanceState | None:
        """The record of an instance (read it; change it only through the manager's methods)."""
        return self._instances.get(instance_id)

    def instance_ids(self) -> Collection[str]:
        return self._instances.keys()

    def instance_states(self) -> list[InstanceState]:
        return list(self._instances.values())

    def begin_request(self, instance: Instance) -> InstanceState:
        """A session-less request starts on ``instance``; pass the result to :meth:`end_request`."""
        state = self.adopt_instance(instance)
        state.inflight += 1
        return state

    def end_request(self, state: InstanceState) -> None:
        """The request :meth:`begin_request` counted ended. Its count is taken off the record it was
        put on, so an instance forgotten (and perhaps adopted again) meanwhile never goes negative."""
        state.inflight -= 1
        if self._instances.get(state.instance.id) is state:
            state.last_active = self.now()

    def touch_instance(self, instance_id: str, *, only_if_unset: bool = False) -> None:
        """Count ``now`` as activity of a session-less instance (it was just started or found)."""
        state = self._instances.get(instance_id)
        if state is not None and not (only_if_unset and state.last_active is not None):
            state.last_active = self.now()

    def lost_instance(self, instance_id: str) -> None:
        """An instance was found dead: forget it here, and its slot in the budget (which deletes it)."""
        gone = self.forget_instance(instance_id)
        if gone is not None:
            self.spawn(self.budget.lost(gone.function, gone))

    def forget_instance(self, instance_id: str) -> Instance | None:
        """Drop an instance from this replica's view and unbind its sessions here (deletes nothing)."""
        state = self._instances.pop(instance_id, None)
        instance = state.instance if state is not None else None
        for key in list(self.registry.sessions_on(instance_id)):
            record = self.registry.get(key)
            if record is not None:
                self.unbind(record)
        if instance is not None:
            self.metrics.instances.labels(instance.function).dec()
        return instance

    # -- instances ----------------------------------------------------------------------------
    def bound_instance(self, record: SessionRecord) -> Instance | None:
        """The session's instance when it has one here and is not being released (the usual
        request: no coroutine to run); else None, and :meth:`instance_for` finds or wakes one."""
        if record.instance is None or record.rkey in self.releasing:
            return None
        return self.instance(record.instance)

    async def instance_for(self, fn: FunctionEntry, record: SessionRecord) -> tuple[Instance, bool]:
        """The session's instance, woken if needed; the flag says whether it had to be started."""
        release = self.releasing.get(record.rkey)
        if release is not None:
            await asyncio.shield(release)
        if record.instance is not None:
            instance = self.instance(record.instance)
            if instance is not None:
                return instance, False
            self.unbind(record)
        waking = self._waking.get(record.rkey)
        if waking is None:
            waking = asyncio.get_running_loop().create_future()
            self._waking[record.rkey] = waking
            self.spawn(self._wake(fn, record, waking))
        instance = await self._queue(fn, waking)
        if record.instance != instance.id and self.registry.get(record.rkey) is record:
            self.bind(record, instance)
        return instance, True

    async def _wake(self, fn: FunctionEntry, record: SessionRecord, done: asyncio.Future[Instance]) -> None:
        try:
            instance = await self._find_or_start(fn, record)
            self.bind(record, instance)
            if not done.done():
                done.set_result(instance)
        except BaseException as e:
            if not done.done():
                done.set_exception(e if isinstance(e, Exception) else GatewayError(503, "cancelled", "shutting down"))
                done.exception()  # retrieved: waiters that timed out must not leave it unobserved
            if not isinstance(e, Exception):
                raise
        finally:
            self._waking.pop(record.rkey, None)

    async def _find_or_start(self, fn: FunctionEntry, record: SessionRecord) -> Instance:
        """The session's own instance if it still runs, else a seat from the Function's budget."""
        if fn.sessions_per_instance == 1:
            existing = await self.backend.list(fn.key, session=record.storage_id)
            if existing:
                await self.budget.claimed(fn.key, existing[0])
                return existing[0]
        grant = await self.budget.acquire(fn)
        if grant.instance is not None:
            self.adopt_instance(grant.instance)
            return grant.instance
        assert grant.slot is not None
        try:
            instance = await self.cold_start(fn, record.storage_id)
        except BaseException:
            self.spawn(self.budget.failed(fn.key, grant.slot))
            raise
        await self.budget.started(fn.key, grant.slot, instance)
        return instance

    async def cold_start(self, fn: FunctionEntry, session_id: str) -> Instance:
        """Start an instance (the caller holds a budget slot for it, or it is session-less)."""
        started = self.now()
        try:
            instance = await self.backend.create(fn.model, session_id)
        except InstanceStartError as e:
            self.metrics.cold_starts.labels(fn.key, "error").inc()
            raise GatewayError(502, "instance_start_failed", str(e)) from e
        self.metrics.cold_starts.labels(fn.key, "ok").inc()
        self.metrics.cold_start_seconds.labels(fn.key).observe(self.now() - started)
        self.adopt_instance(instance)
        return instance

    async def _queue(self, fn: FunctionEntry, waking: asyncio.Future[Instance]) -> Instance:
        """Wait (bounded queue, bounded time) for an instance being started."""
        depth = self._queued.get(fn.key, 0)
        if depth >= self.settings.max_queue:
            self.metrics.queue_rejected.labels(fn.key).inc()
            raise unavailable(
                f"too many requests waiting for {fn.key} to start", self.settings.retry_after, "queue_full"
            )
        self._queued[fn.key] = depth + 1
        self.metrics.queue_depth.labels(fn.key).inc()
        try:
            async with asyncio.timeout(self.settings.cold_start_timeout):
                return await asyncio.shield(waking)
        except TimeoutError:
            limit = self.settings.cold_start_timeout
            message = f"no instance of {fn.key} became ready within {limit}s"
            raise GatewayError(504, "cold_start_timeout", message) from None
        finally:
            self._queued[fn.key] -= 1
            self.metrics.queue_depth.labels(fn.key).dec()

    async def least_loaded(self, fn: FunctionEntry) -> tuple[Instance, bool]:
        """Affinity None: the instance with the fewest requests in flight, started when all are full."""
        best: Instance | None = None
        best_load = 0
        for state in self._instances.values():
            if state.instance.function == fn.key and (best is None or state.inflight < best_load):
                best, best_load = state.instance, state.inflight
        if best is not None and best_load < fn.concurrency:
            return best, False
        key = INSTANCE_TIMER_PREFIX + fn.key
        waking = self._waking.get(key)
        if waking is None:
            running = sum(1 for state in self._instances.values() if state.instance.function == fn.key)
            if running >= fn.max_instances:
                if best is not None:
                    return best, False
                raise unavailable(
                    f"{fn.key} is at maxInstances ({fn.max_instances})", self.settings.retry_after, "max_instances"
                )
            waking = asyncio.get_running_loop().create_future()
            self._waking[key] = waking
            self.spawn(self._start_shared(fn, key, waking))
        instance = await self._queue(fn, waking)
        return instance, True

    async def _start_shared(self, fn: FunctionEntry, key: str, done: asyncio.Future[Instance]) -> None:
        try:
            instance = await self.claim_warm(fn) or await self.cold_start(fn, mint_owned_id(self.membership))
            self.touch_instance(instance.id)
            self.schedule(INSTANCE_TIMER_PREFIX + instance.id, self.now() + fn.idle_timeout)
            done.set_result(instance)
        except Exception as e:
            done.set_exception(e)
            done.exception()
        finally:
            self._waking.pop(key, None)
