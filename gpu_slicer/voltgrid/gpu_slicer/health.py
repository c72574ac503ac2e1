"""Card health from NVML events: a critical XID or an uncorrectable ECC error takes a card out of service.

NVML says when a card fails but never when it is fine again, so an unhealthy card is probed after a quiet
period with no new critical event, and comes back once it answers. Application-caused XIDs
(:data:`~voltgrid.gpu_slicer.hardware.BENIGN_XIDS`) and corrected ECC errors change nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Final

from voltgrid.gpu_slicer.board import DeviceBoard
from voltgrid.gpu_slicer.hardware import Hardware, HealthEvent

log = logging.getLogger(__name__)

#: How long an unhealthy card must stay free of critical events before it is probed.
RECOVERY_QUIET_PERIOD_S: Final = 60.0
#: How often unhealthy cards are looked at for recovery.
RECOVERY_PROBE_INTERVAL_S: Final = 10.0


class HealthMonitor:
    """Feeds NVML events into the board and brings recovered cards back."""

    def __init__(
        self,
        hardware: Hardware,
        board: DeviceBoard,
        cards: Sequence[str],
        quiet_period_s: float = RECOVERY_QUIET_PERIOD_S,
        probe_interval_s: float = RECOVERY_PROBE_INTERVAL_S,
    ) -> None:
        self._hw = hardware
        self._board = board
        self._cards = list(cards)
        self._quiet = quiet_period_s
        self._interval = probe_interval_s
        self._last_fault: dict[str, float] = {}

    async def run(self) -> None:
        """Watch events and probe for recovery until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._events())
            tg.create_task(self._recover())

    async def handle(self, event: HealthEvent) -> None:
        if not event.critical:
            log.info("ignoring non-critical %s event (xid %s) on %s", event.kind, event.xid, event.uuid or "all")
            return
        targets = [event.uuid] if event.uuid in self._cards else self._cards if event.uuid is None else []
        now = asyncio.get_running_loop().time()
        for uuid in targets:
            log.warning("card %s unhealthy: %s (xid %s)", uuid, event.kind, event.xid)
            self._last_fault[uuid] = now
            await self._board.set_card_health(uuid, healthy=False)

    async def _events(self) -> None:
        while True:
            await self.handle(await self._hw.next_event())

    async def _recover(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval)
            for uuid in sorted(self._board.unhealthy_cards()):
                if loop.time() - self._last_fault.get(uuid, 0.0) < self._quiet:
                    continue
                if await self._hw.probe(uuid):
                    log.info("card %s recovered", uuid)
                    await self._board.set_card_health(uuid, healthy=True)
