"""The device list the plugin advertises, and the change feed behind every ListAndWatch stream.

A slice is healthy when its card is (NVML health) and the MPS daemon is up with its limits in place:
without MPS a container would get the whole card. The board is closed on shutdown: every stream then
sends an empty list and ends, so the kubelet stops scheduling onto a plugin that is going away.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Final

from voltgrid.gpu_slicer.slices import parse_device_id

HEALTHY: Final = "Healthy"
UNHEALTHY: Final = "Unhealthy"

#: One advertised device: (id, "Healthy" | "Unhealthy").
DeviceHealth = tuple[str, str]


class DeviceBoard:
    """The current device list of one resource; await :meth:`watch` for every change."""

    def __init__(self, device_ids: Sequence[str]) -> None:
        self._devices = list(device_ids)
        self._unhealthy_cards: set[str] = set()
        self._mps_ready = False
        self._closed = False
        self._version = 0
        self._watchers = 0
        self._changed = asyncio.Condition()

    @property
    def closed(self) -> bool:
        return self._closed

    def snapshot(self) -> list[DeviceHealth]:
        """The list a ListAndWatch stream sends now (empty once closed)."""
        if self._closed:
            return []
        return [
            (dev, HEALTHY if self._mps_ready and parse_device_id(dev)[0] not in self._unhealthy_cards else UNHEALTHY)
            for dev in self._devices
        ]

    async def set_card_health(self, uuid: str, healthy: bool) -> None:
        before = set(self._unhealthy_cards)
        if healthy:
            self._unhealthy_cards.discard(uuid)
        else:
            self._unhealthy_cards.add(uuid)
        if before != self._unhealthy_cards:
            await self._bump()

    def unhealthy_cards(self) -> frozenset[str]:
        return frozenset(self._unhealthy_cards)

    async def set_mps_ready(self, ready: bool) -> None:
        if ready != self._mps_ready:
            self._mps_ready = ready
            await self._bump()

    async def close(self) -> None:
        """Advertise nothing from now on; every :meth:`watch` sends the empty list and ends."""
        if not self._closed:
            self._closed = True
            await self._bump()

    async def _bump(self) -> None:
        async with self._changed:
            self._version += 1
            self._changed.notify_all()

    async def watch(self) -> AsyncIterator[list[DeviceHealth]]:
        """Yield the list now and after every change; the last one, after :meth:`close`, is empty."""
        seen = -1
        self._watchers += 1
        try:
            while True:
                async with self._changed:
                    while self._version == seen:
                        await self._changed.wait()
                    seen = self._version
                    devices = self.snapshot()
                    last = self._closed
                yield devices
                if last:
                    return
        finally:
            self._watchers -= 1
            async with self._changed:
                self._changed.notify_all()

    async def drained(self) -> None:
        """Wait until every :meth:`watch` has ended (after :meth:`close`: sent its empty list)."""
        async with self._changed:
            while self._watchers:
                await self._changed.wait()
