"""Warm pools with pre-minted session ids.

A warm instance is started already labelled with a fresh session id, so its per-session storage
is mounted before any request; a new session that takes it simply gets that id, with no write on
the hot path. Each replica only ever hands out warm instances whose id it *owns* (rendezvous
hashing), so two replicas never give the same warm instance to two clients, without any lock or
write. Where the gateway manages pools itself (local backend) it mints ids it owns; in a cluster
the operator creates warm pods and each replica claims the ones it owns. Those are found by the
resync's LIST of instances, and by one LIST of the function's pods when a new session finds none
(at most once per ``warm_discovery_interval``): an unclaimed warm pod is one without the
``last-active`` checkpoint, which the claiming replica writes at once (see the manager).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from voltgrid.backends.base import Instance, InstanceBackend
from voltgrid.gateway.functions import FunctionEntry
from voltgrid.registry.ids import mint_session_id
from voltgrid.registry.ownership import Membership

logger = logging.getLogger(__name__)


def mint_owned_id(membership: Membership) -> str:
    """A fresh session id that this replica owns (expected tries: the number of replicas)."""
    while True:
        candidate = mint_session_id()
        if membership.is_owner(candidate):
            return candidate


def unclaimed_warm(instance: Instance) -> bool:
    """A warm instance no session has claimed yet (claiming writes its first checkpoint)."""
    return instance.warm and instance.last_active is None


class WarmPools:
    """Unclaimed warm instances by function, and their refilling."""

    def __init__(
        self,
        backend: InstanceBackend,
        membership: Membership,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        *,
        manage: bool,
        discovery_interval: float = 1.0,
    ) -> None:
        self._backend = backend
        self._membership = membership
        self._spawn = spawn
        self._manage = manage
        self._discovery_interval = discovery_interval
        self._pools: dict[str, list[Instance]] = {}
        self._starting: dict[str, int] = {}
        self._discovered: dict[str, float] = {}

    @property
    def managed(self) -> bool:
        """Whether this replica starts warm instances itself (else it discovers the operator's)."""
        return self._manage

    def size(self, function: str) -> int:
        return len(self._pools.get(function, ()))

    def instances(self) -> list[Instance]:
        return [i for pool in self._pools.values() for i in pool]

    def claim(self, fn: FunctionEntry) -> Instance | None:
        """Take a warm instance whose pre-minted id this replica owns, and refill behind it."""
        pool = self._pools.get(fn.key)
        found = None
        while pool:
            candidate = pool.pop()
            if self._membership.is_owner(candidate.session):
                found = candidate
                break
        self.refill(fn)
        return found

    def offer(self, instance: Instance) -> None:
        """Add a discovered warm instance (cluster: created by the operator)."""
        pool = self._pools.setdefault(instance.function, [])
        if all(i.id != instance.id for i in pool):
            pool.append(instance)

    def replace(self, function: str, found: Collection[Instance]) -> None:
        """The unclaimed warm instances of ``function`` a LIST found are now its whole pool
        (instances the operator deleted, or that another replica claimed, drop out)."""
        if found:
            self._pools[function] = list(found)
        else:
            self._pools.pop(function, None)

    async def discover(self, fn: FunctionEntry, in_use: Collection[str]) -> None:
        """One LIST for the unclaimed warm instances of ``fn`` (those not ``in_use`` here), unless
        this replica manages its pools or listed them less than the discovery interval ago."""
        if self._manage or not fn.warm_pool:
            return
        now = asyncio.get_running_loop().time()
        if now < self._discovered.get(fn.key, float("-inf")) + self._discovery_interval:
            return
        self._discovered[fn.key] = now
        try:
            listed = await self._backend.list(fn.key)
        except Exception:
            logger.exception("listing warm instances of %s failed", fn.key)
            return
        self.replace(fn.key, [i for i in listed if unclaimed_warm(i) and i.id not in in_use])

    def drop_unowned(self) -> list[Instance]:
        """After a membership change: give up warm instances another replica now owns."""
        dropped = []
        for pool in self._pools.values():
            keep = [i for i in pool if self._membership.is_owner(i.session)]
            dropped += [i for i in pool if i not in keep]
            pool[:] = keep
        return dropped

    def refill(self, fn: FunctionEntry) -> None:
        if not self._manage:
            return
        missing = fn.warm_pool - self.size(fn.key) - self._starting.get(fn.key, 0)
        for _ in range(max(0, missing)):
            self._starting[fn.key] = self._starting.get(fn.key, 0) + 1
            self._spawn(self._start_one(fn))

    async def _start_one(self, fn: FunctionEntry) -> None:
        try:
            instance = await self._backend.create(fn.model, mint_owned_id(self._membership), warm=True)
            self._pools.setdefault(fn.key, []).append(instance)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("warm instance for %s failed to start", fn.key)
        finally:
            self._starting[fn.key] -= 1

    async def drain(self) -> None:
        """Delete every unclaimed warm instance (shutdown of a self-managed pool)."""
        for pool in self._pools.values():
            while pool:
                await self._backend.delete(pool.pop())
