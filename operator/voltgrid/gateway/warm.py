"""Warm pools with pre-minted session ids.

A warm instance is started already labelled with a fresh session id, so its per-session storage
is mounted before any request; a new session that takes it simply gets that id, with no write on
the hot path. Each replica only ever hands out warm instances whose id it *owns* (rendezvous
hashing), so two replicas never give the same warm instance to two clients, without any lock or
write. Where the gateway manages pools itself (local backend) it mints ids it owns; in a cluster
the operator creates warm pods and each replica claims the ones it owns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
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


class WarmPools:
    """Unclaimed warm instances by function, and their refilling."""

    def __init__(
        self,
        backend: InstanceBackend,
        membership: Membership,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        *,
        manage: bool,
    ) -> None:
        self._backend = backend
        self._membership = membership
        self._spawn = spawn
        self._manage = manage
        self._pools: dict[str, list[Instance]] = {}
        self._starting: dict[str, int] = {}

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
