"""In-memory stand-ins for NVML and the MPS daemon: for tests, and for ``--fake`` on nodes without GPUs.

The fakes behave like the real things where the plugin can tell: cards have UUIDs and memory, events
arrive when injected, probes fail while a fault is injected, and the MPS daemon keeps its defaults until
it is killed (then it answers nothing, like a dead daemon, until started again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from voltgrid.gpu_slicer.errors import MpsError
from voltgrid.gpu_slicer.hardware import Gpu, HealthEvent

FAKE_GPU_MEMORY_BYTES: Final = 16 * 1024**3
FAKE_GPU_NAME: Final = "Voltgrid Fake GPU"


def fake_gpus(count: int, memory_bytes: int = FAKE_GPU_MEMORY_BYTES) -> list[Gpu]:
    """``count`` cards with stable UUIDs, e.g. ``GPU-00000000-0000-4000-8000-000000000001``."""
    return [
        Gpu(index=i, uuid=f"GPU-00000000-0000-4000-8000-{i + 1:012d}", name=FAKE_GPU_NAME, memory_bytes=memory_bytes)
        for i in range(count)
    ]


class FakeHardware:
    """:class:`~voltgrid.gpu_slicer.hardware.Hardware` with configurable cards and injected faults."""

    def __init__(self, gpus: Sequence[Gpu]) -> None:
        self._gpus = list(gpus)
        self._events: asyncio.Queue[HealthEvent] = asyncio.Queue()
        self.faulty: set[str] = set()
        self.closed = False

    def gpus(self) -> Sequence[Gpu]:
        return self._gpus

    def inject(self, event: HealthEvent, *, fault: bool = True) -> None:
        """Deliver ``event``; with ``fault`` the card also fails probes until :meth:`repair`."""
        if fault and event.critical:
            self.faulty.update([event.uuid] if event.uuid else [g.uuid for g in self._gpus])
        self._events.put_nowait(event)

    def repair(self, uuid: str) -> None:
        self.faulty.discard(uuid)

    async def next_event(self) -> HealthEvent:
        return await self._events.get()

    async def probe(self, uuid: str) -> bool:
        return uuid not in self.faulty and any(g.uuid == uuid for g in self._gpus)

    def close(self) -> None:
        self.closed = True


class FakeMps:
    """:class:`~voltgrid.gpu_slicer.hardware.MpsControl` that records commands and keeps defaults."""

    def __init__(self) -> None:
        self.running = False
        self.fail_start = False
        self.starts = 0
        self.commands: list[str] = []
        self.defaults: dict[str, str] = {}

    def kill(self) -> None:
        """The daemon dies and forgets its limits."""
        self.running = False
        self.defaults.clear()

    async def start(self) -> None:
        if self.fail_start:
            raise MpsError("fake MPS daemon refuses to start")
        if self.running:
            raise MpsError("An instance of this daemon is already running")
        self.starts += 1
        self.running = True

    async def command(self, line: str) -> str:
        if not self.running:
            raise MpsError("Cannot find MPS control daemon process")
        self.commands.append(line)
        verb, *args = line.split()
        if verb.startswith("set_default_"):
            self.defaults[verb.removeprefix("set_default_")] = " ".join(args)
            return ""
        if verb == "get_default_active_thread_percentage":
            return self.defaults.get("active_thread_percentage", "100.0") + "\n"
        if verb == "quit":
            self.kill()
            return ""
        raise MpsError(f"unknown command {verb}")

    async def stop(self) -> None:
        if self.running:
            await self.command("quit")
