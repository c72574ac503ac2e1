"""The real :class:`~voltgrid.gpu_slicer.hardware.Hardware`: NVIDIA's NVML through nvidia-ml-py (``pynvml``).

NVML's event wait blocks, so it runs in a worker thread with a short timeout, which bounds how long a
cancelled wait keeps its thread. Events are registered per card for XID and ECC errors; a card that
cannot deliver events (old boards, some virtual GPUs) is still sliced, its health then rests on probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Final

import pynvml

from voltgrid.gpu_slicer.errors import HardwareError
from voltgrid.gpu_slicer.hardware import EventKind, Gpu, HealthEvent

log = logging.getLogger(__name__)

#: Longest one blocking NVML event wait runs in its thread.
EVENT_WAIT_MS: Final = 1000
EVENT_MASK: Final = (
    pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError | pynvml.nvmlEventTypeSingleBitEccError
)
EVENT_KINDS: Final = {
    pynvml.nvmlEventTypeXidCriticalError: EventKind.XID,
    pynvml.nvmlEventTypeDoubleBitEccError: EventKind.ECC_DOUBLE_BIT,
    pynvml.nvmlEventTypeSingleBitEccError: EventKind.ECC_SINGLE_BIT,
}


def _text(value: str | bytes) -> str:
    # Older nvidia-ml-py releases return bytes.
    return value.decode() if isinstance(value, bytes) else value


def event_from(data: Any) -> HealthEvent | None:
    """Map an ``nvmlEventData_t`` to a HealthEvent; None for event types the slicer does not watch."""
    kind = EVENT_KINDS.get(data.eventType)
    if kind is None:
        return None
    uuid = _text(pynvml.nvmlDeviceGetUUID(data.device)) if data.device else None
    return HealthEvent(uuid=uuid, kind=kind, xid=int(data.eventData) if kind is EventKind.XID else 0)


class NvmlHardware:
    """The node's NVIDIA cards; raises HardwareError when NVML or the driver is missing."""

    def __init__(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise HardwareError(f"NVML is not available (is the NVIDIA driver installed?): {e}") from e
        try:
            self._gpus = self._discover()
            self._events = pynvml.nvmlEventSetCreate()
            for gpu in self._gpus:
                self._register_events(gpu)
        except pynvml.NVMLError as e:
            pynvml.nvmlShutdown()
            raise HardwareError(f"NVML query failed: {e}") from e

    @staticmethod
    def _discover() -> list[Gpu]:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(
                Gpu(
                    index=index,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                )
            )
        return gpus

    def _register_events(self, gpu: Gpu) -> None:
        handle = pynvml.nvmlDeviceGetHandleByIndex(gpu.index)
        try:
            supported = pynvml.nvmlDeviceGetSupportedEventTypes(handle)
            pynvml.nvmlDeviceRegisterEvents(handle, EVENT_MASK & supported, self._events)
        except pynvml.NVMLError_NotSupported:
            log.warning("card %s delivers no health events; its health rests on probes", gpu.uuid)

    def gpus(self) -> Sequence[Gpu]:
        return self._gpus

    def _wait(self) -> HealthEvent | None:
        try:
            return event_from(pynvml.nvmlEventSetWait_v2(self._events, EVENT_WAIT_MS))
        except pynvml.NVMLError_Timeout:
            return None

    async def next_event(self) -> HealthEvent:
        while True:
            event = await asyncio.to_thread(self._wait)
            if event is not None:
                return event

    @staticmethod
    def _answers(uuid: str) -> bool:
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            pynvml.nvmlDeviceGetMemoryInfo(handle)
        except pynvml.NVMLError:
            return False
        return True

    async def probe(self, uuid: str) -> bool:
        return await asyncio.to_thread(self._answers, uuid)

    def close(self) -> None:
        try:
            pynvml.nvmlEventSetFree(self._events)
        finally:
            pynvml.nvmlShutdown()
