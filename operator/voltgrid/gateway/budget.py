"""Instance budgets: ONE authoritative counter per Function, held by the Function's ring owner.

``maxInstances`` and ``sessionsPerInstance`` are limits of the whole gateway, not of a replica. So
each Function's budget lives on exactly one replica, the rendezvous owner of :func:`budget_key`
(the same ring that places sessions), and every replica asks it before starting an instance:

* :meth:`Budgets.acquire` -- a *seat* for a session: on an instance with a free seat (packing,
  waiting for it if it is still starting), else a *slot* to start a new instance (counted from this
  moment, so a burst cannot overshoot), else 503 ``max_instances``. A slot's starter reports
  :meth:`~Budgets.started` or :meth:`~Budgets.failed`.
* :meth:`Budgets.release` -- a session gave its seat back (idle, expiry, DELETE); the instance is
  deleted by the budget owner when its last seat goes, so no replica deletes an instance that
  another replica's session still uses.
* :meth:`Budgets.lost` -- an instance was found dead; its slot goes at once.

Other replicas reach the owner over the internal hop (:mod:`voltgrid.gateway.peers`); if the owner
is unreachable it is suspected and ownership recomputed. A replica that becomes a Function's budget
owner rebuilds the counter from one LIST of the Function's instances and the seat counts every
replica reports (``/budget/seats``); one that stops being the owner drops its counter.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final

from voltgrid.backends.base import Instance, InstanceBackend
from voltgrid.gateway.errors import GatewayError, unavailable
from voltgrid.gateway.functions import FunctionCatalog, FunctionEntry
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.gateway.warm import unclaimed_warm
from voltgrid.registry.ownership import Membership

logger = logging.getLogger(__name__)

#: Prefix of the ring key of a Function's budget (session keys cannot contain NUL).
BUDGET_KEY_PREFIX: Final = "\x00budget:"
#: A slot whose starter never reported back is dropped after the cold-start timeout times this.
PENDING_SLOT_FACTOR: Final = 2.0


def budget_key(function: str) -> str:
    """The ring key whose owner holds ``function``'s budget."""
    return BUDGET_KEY_PREFIX + function


def instance_json(instance: Instance) -> dict[str, Any]:
    return {
        "id": instance.id,
        "function": instance.function,
        "url": instance.url,
        "session": instance.session,
        "created": instance.created,
    }


def instance_of(data: dict[str, Any]) -> Instance:
    return Instance(
        id=str(data["id"]),
        function=str(data["function"]),
        url=str(data["url"]),
        session=str(data["session"]),
        created=float(data.get("created", 0.0)),
    )


@dataclass
class Grant:
    """What :meth:`Budgets.acquire` gives: a seat on ``instance``, or ``slot`` to start one."""

    instance: Instance | None = None
    slot: str | None = None


@dataclass
class _Slot:
    id: str
    seats: int
    ready: asyncio.Future[Instance]
    instance: Instance | None = None


@dataclass
class _Counter:
    """The authoritative budget of one Function (on its owner only)."""

    slots: dict[str, _Slot] = field(default_factory=dict)
    #: Slot of each started instance (releases find theirs without a scan).
    started: dict[str, _Slot] = field(default_factory=dict)

    def add(self, slot: _Slot) -> None:
        self.slots[slot.id] = slot
        if slot.instance is not None:
            self.started[slot.instance.id] = slot

    def pop(self, slot: _Slot) -> None:
        self.slots.pop(slot.id, None)
        if slot.instance is not None and self.started.get(slot.instance.id) is slot:
            del self.started[slot.instance.id]

    def by_instance(self, instance_id: str) -> _Slot | None:
        return self.started.get(instance_id)


#: Asks the budget owner ``peer`` (op, payload) -> JSON answer; raises ConnectionError if unreachable.
Remote = Callable[[str, str, dict[str, Any], float], Coroutine[Any, Any, dict[str, Any]]]
#: Seat counts by instance of ``function`` on every other replica.
PeerSeats = Callable[[str], Coroutine[Any, Any, dict[str, int]]]


class Budgets:
    """This replica's side of every Function's budget (client, and owner for the ones it owns)."""

    def __init__(
        self,
        settings: GatewaySettings,
        backend: InstanceBackend,
        catalog: FunctionCatalog,
        membership: Membership,
        *,
        local_seats: Callable[[str], dict[str, int]],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._catalog = catalog
        self._membership = membership
        self._local_seats = local_seats
        self._spawn = spawn
        self._counters: dict[str, _Counter] = {}
        self._rebuilding: dict[str, asyncio.Lock] = {}
        self._ids = itertools.count()
        #: Set by the lifecycle once the HTTP client exists (a lone replica never needs them).
        self.remote: Remote | None = None
        self.peer_seats: PeerSeats | None = None

    # -- client side ------------------------------------------------------------------------------
    async def _ask(self, function: str, op: str, payload: dict[str, Any], seconds: float) -> dict[str, Any] | None:
        """The budget owner's answer, or None when this replica is the owner (serve it here)."""
        for _ in range(len(self._membership.members)):
            owner = self._membership.owner(budget_key(function))
            if owner == self._membership.self_id or self.remote is None:
                return None
            try:
                return await self.remote(owner, op, {"function": function, **payload}, seconds)
            except ConnectionError:
                self._membership.suspect(owner)
        return None

    async def acquire(self, fn: FunctionEntry) -> Grant:
        wait = self._settings.cold_start_timeout
        answer = await self._ask(fn.key, "acquire", {}, wait + self._settings.upstream_timeout)
        if answer is None:
            return await self.serve_acquire(fn.key)
        if "error" in answer:
            error = answer["error"]
            raise GatewayError(int(answer["status"]), str(error["code"]), str(error["message"]), answer.get("headers"))
        if answer.get("instance"):
            return Grant(instance=instance_of(answer["instance"]))
        return Grant(slot=str(answer["slot"]))

    async def started(self, function: str, slot: str, instance: Instance) -> None:
        payload = {"slot": slot, "instance": instance_json(instance)}
        if await self._ask(function, "started", payload, self._settings.upstream_timeout) is None:
            self.serve_started(function, slot, instance)

    async def failed(self, function: str, slot: str) -> None:
        if await self._ask(function, "failed", {"slot": slot}, self._settings.upstream_timeout) is None:
            self.serve_failed(function, slot)

    async def release(self, function: str, instance: Instance) -> None:
        payload = {"instance": instance_json(instance)}
        if await self._ask(function, "release", payload, self._settings.upstream_timeout) is None:
            await self.serve_release(function, instance)

    async def lost(self, function: str, instance: Instance) -> None:
        payload = {"instance": instance_json(instance)}
        if await self._ask(function, "lost", payload, self._settings.upstream_timeout) is None:
            await self.serve_lost(function, instance)

    async def claimed(self, function: str, instance: Instance) -> None:
        """A session took an instance that already runs (a warm one, or its own found by a LIST)."""
        payload = {"instance": instance_json(instance)}
        if await self._ask(function, "claimed", payload, self._settings.upstream_timeout) is None:
            self.serve_claimed(function, instance)

    # -- owner side -------------------------------------------------------------------------------
    def count(self, function: str) -> int:
        """Instances counted against ``function``'s maxInstances here (0 unless the budget owner)."""
        counter = self._counters.get(function)
        return len(counter.slots) if counter else 0

    async def _counter(self, function: str) -> _Counter:
        counter = self._counters.get(function)
        if counter is not None:
            return counter
        lock = self._rebuilding.setdefault(function, asyncio.Lock())
        async with lock:
            counter = self._counters.get(function)
            if counter is None:
                counter = await self._rebuild(function)
                self._counters[function] = counter
            return counter

    async def _rebuild(self, function: str) -> _Counter:
        """The counter of a Function this replica has just become the budget owner of."""
        counter = _Counter()
        try:
            listed = await self._backend.list(function)
        except Exception as e:
            raise unavailable(f"cannot count the instances of {function}", self._settings.retry_after) from e
        seats = dict(self._local_seats(function))
        if self.peer_seats is not None and listed:
            for instance_id, n in (await self.peer_seats(function)).items():
                seats[instance_id] = seats.get(instance_id, 0) + n
        loop = asyncio.get_running_loop()
        for instance in listed:
            if unclaimed_warm(instance):
                continue
            ready: asyncio.Future[Instance] = loop.create_future()
            ready.set_result(instance)
            counter.add(_Slot(self._slot_id(), seats.get(instance.id, 0), ready, instance))
        return counter

    def _slot_id(self) -> str:
        return f"{self._membership.self_id}#{next(self._ids)}"

    async def serve_acquire(self, function: str) -> Grant:
        fn = self._catalog.get(function)
        if fn is None:
            raise GatewayError(404, "function_not_found", f"function {function} is not served here")
        counter = await self._counter(function)
        while True:
            if fn.sessions_per_instance > 1:
                shared = min(
                    (s for s in counter.slots.values() if s.seats < fn.sessions_per_instance),
                    key=lambda s: -s.seats,  # fill the fullest first: fewer instances stay partly used
                    default=None,
                )
                if shared is not None:
                    shared.seats += 1
                    try:
                        return Grant(instance=await _bounded(shared.ready, self._settings.cold_start_timeout))
                    except TimeoutError:
                        shared.seats -= 1
                        limit = self._settings.cold_start_timeout
                        message = f"no instance of {fn.key} became ready within {limit}s"
                        raise GatewayError(504, "cold_start_timeout", message) from None
                    except GatewayError:
                        continue  # its start failed: the slot is gone, look again
            if len(counter.slots) >= fn.max_instances:
                raise unavailable(
                    f"{fn.key} is at maxInstances ({fn.max_instances})", self._settings.retry_after, "max_instances"
                )
            slot = _Slot(self._slot_id(), 1, asyncio.get_running_loop().create_future())
            counter.add(slot)
            self._spawn(self._expire_pending(counter, slot))
            return Grant(slot=slot.id)

    async def _expire_pending(self, counter: _Counter, slot: _Slot) -> None:
        """Drop a slot whose starter never reported back (it died while starting)."""
        try:
            await _bounded(slot.ready, self._settings.cold_start_timeout * PENDING_SLOT_FACTOR)
        except TimeoutError:
            if counter.slots.get(slot.id) is slot and slot.instance is None:
                logger.warning("dropping slot %s: its instance never reported as started", slot.id)
                self._drop(counter, slot, GatewayError(504, "cold_start_timeout", "the instance did not start"))
        except GatewayError:
            pass

    def _drop(self, counter: _Counter, slot: _Slot, error: GatewayError) -> None:
        counter.pop(slot)
        if not slot.ready.done():
            slot.ready.set_exception(error)
            slot.ready.exception()  # retrieved: a slot nobody waits on must not warn

    def serve_started(self, function: str, slot_id: str, instance: Instance) -> None:
        counter = self._counters.setdefault(function, _Counter())
        slot = counter.slots.get(slot_id)
        if slot is None:  # expired, or the counter was rebuilt meanwhile: the instance runs, count it
            slot = _Slot(slot_id, 1, asyncio.get_running_loop().create_future())
            counter.add(slot)
        slot.instance = instance
        counter.started[instance.id] = slot
        if not slot.ready.done():
            slot.ready.set_result(instance)

    def serve_failed(self, function: str, slot_id: str) -> None:
        counter = self._counters.get(function)
        slot = counter.slots.get(slot_id) if counter else None
        if counter is not None and slot is not None:
            self._drop(counter, slot, GatewayError(502, "instance_start_failed", "the instance failed to start"))

    def serve_claimed(self, function: str, instance: Instance) -> None:
        counter = self._counters.get(function)
        if counter is None:  # no counter yet: the rebuild's LIST will find the instance
            return
        slot = counter.by_instance(instance.id)
        if slot is None:
            ready: asyncio.Future[Instance] = asyncio.get_running_loop().create_future()
            ready.set_result(instance)
            counter.add(_Slot(self._slot_id(), 1, ready, instance))

    async def serve_release(self, function: str, instance: Instance) -> None:
        counter = await self._counter(function)
        slot = counter.by_instance(instance.id)
        if slot is not None:
            slot.seats -= 1
            if slot.seats > 0:
                return
            counter.pop(slot)
        else:
            fn = self._catalog.get(function)
            if fn is not None and fn.sessions_per_instance > 1:
                return  # not counted here: other sessions may still use it
        await self._delete(instance)

    async def serve_lost(self, function: str, instance: Instance) -> None:
        counter = self._counters.get(function)
        slot = counter.by_instance(instance.id) if counter else None
        if counter is not None and slot is not None:
            counter.pop(slot)
        await self._delete(instance)

    async def _delete(self, instance: Instance) -> None:
        try:
            await self._backend.delete(instance)
        except Exception:
            logger.exception("deleting instance %s failed", instance.id)

    def membership_changed(self) -> None:
        """Drop the counters of Functions whose budget another replica owns now."""
        for function in list(self._counters):
            if not self._membership.is_owner(budget_key(function)):
                del self._counters[function]


async def _bounded(future: asyncio.Future[Instance], seconds: float) -> Instance:
    async with asyncio.timeout(seconds):
        return await asyncio.shield(future)
