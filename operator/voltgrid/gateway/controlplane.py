"""Riding out a control-plane outage: placement waits for the apiserver instead of failing.

A bound session never needs the control plane (its instance's address is in memory), but a new
or returning one does: a LIST for its instance, a pod create. While the apiserver is unreachable
those raise :class:`~voltgrid.backends.base.ControlPlaneUnavailableError`. :class:`PatientBackend`
wraps the backend the gateway places with and retries them (backing off from
:data:`FIRST_RETRY` to :data:`MAX_RETRY` seconds), so the request waits in the cold-start queue as
it would for a slow pod, and gets its instance once the apiserver answers. It gives up after
``patience`` seconds (a little under the cold-start timeout, so that the answer is this one and
not the queue's generic 504): then 503 with ``Retry-After``. An outage is logged once when it
begins and once when it ends, not per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from voltgrid.api.function import Function
from voltgrid.backends.base import ControlPlaneUnavailableError, Instance, InstanceBackend
from voltgrid.gateway.errors import GatewayError, unavailable

logger = logging.getLogger(__name__)

FIRST_RETRY: Final = 0.1
MAX_RETRY: Final = 2.0
#: The share of the cold-start timeout a placement waits for the control plane (see the module docstring).
PATIENCE_SHARE: Final = 0.9

T = TypeVar("T")


class PatientBackend:
    """An :class:`InstanceBackend` whose ``create`` and ``list`` wait out control-plane outages."""

    def __init__(self, backend: InstanceBackend, *, patience: float, retry_after: int) -> None:
        self.backend = backend
        self.patience = patience
        self.retry_after = retry_after
        #: Loop time the current outage was first seen; None while the control plane answers.
        self.outage_since: float | None = None

    async def create(self, function: Function, session_id: str, *, warm: bool = False) -> Instance:
        return await self._patiently(lambda: self.backend.create(function, session_id, warm=warm))

    async def list(self, function: str | None = None, session: str | None = None) -> list[Instance]:
        return await self._patiently(lambda: self.backend.list(function, session))

    async def delete(self, instance: Instance) -> None:
        await self.backend.delete(instance)

    async def checkpoint(self, instance: Instance, when: float) -> None:
        await self.backend.checkpoint(instance, when)

    async def close(self) -> None:
        await self.backend.close()

    async def _patiently(self, call: Callable[[], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.patience
        delay = FIRST_RETRY
        while True:
            try:
                result = await call()
            except ControlPlaneUnavailableError as e:
                now = loop.time()
                if self.outage_since is None:
                    self.outage_since = now
                    logger.warning("control plane unavailable, holding new placements: %s", e)
                if now >= give_up:
                    raise self._gave_up(e) from None
                await asyncio.sleep(min(delay, give_up - now))
                delay = min(delay * 2, MAX_RETRY)
                continue
            if self.outage_since is not None:
                logger.warning("control plane available again after %.1fs", loop.time() - self.outage_since)
                self.outage_since = None
            return result

    def _gave_up(self, error: ControlPlaneUnavailableError) -> GatewayError:
        message = f"the control plane did not answer within {self.patience:g}s ({error}); try again later"
        return unavailable(message, self.retry_after, "control_plane_unavailable")
