"""The pynvml backend against a scripted stand-in for libnvidia-ml (no GPU on the test machines).

Only the calls into ``pynvml`` are replaced: discovery, event registration, the event wait loop, probes
and error mapping all run as on a node.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from voltgrid.gpu_slicer.errors import HardwareError
from voltgrid.gpu_slicer.hardware import EventKind, Gpu, HealthEvent
from voltgrid.gpu_slicer.nvml import NvmlHardware, event_from

UUIDS = ["GPU-aaaaaaaa-0000-0000-0000-000000000000", "GPU-bbbbbbbb-0000-0000-0000-000000000000"]


@dataclass
class ScriptedNvml:
    """Two cards; card 1 cannot deliver events; events are queued by the test."""

    events: list[Any] = field(default_factory=list)
    registered: dict[int, int] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    shut_down: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        handles = [SimpleNamespace(index=i) for i in range(len(UUIDS))]

        def register(handle: Any, mask: int, event_set: Any) -> None:
            if handle.index == 1:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            self.registered[handle.index] = mask

        def wait(event_set: Any, timeout_ms: int) -> Any:
            with self.lock:
                if self.events:
                    return self.events.pop(0)
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)

        def by_uuid(uuid: str) -> Any:
            if uuid in self.gone:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
            return handles[UUIDS.index(uuid)]

        for name, fn in {
            "nvmlInit": lambda: None,
            "nvmlShutdown": lambda: setattr(self, "shut_down", True),
            "nvmlDeviceGetCount": lambda: len(handles),
            "nvmlDeviceGetHandleByIndex": lambda i: handles[i],
            "nvmlDeviceGetHandleByUUID": by_uuid,
            "nvmlDeviceGetUUID": lambda h: UUIDS[h.index],
            "nvmlDeviceGetName": lambda h: b"NVIDIA H100 80GB HBM3",  # bytes, like older releases
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(total=80 * 1024**3),
            "nvmlEventSetCreate": lambda: "event-set",
            "nvmlEventSetFree": lambda s: None,
            "nvmlDeviceGetSupportedEventTypes": lambda h: pynvml.nvmlEventTypeAll,
            "nvmlDeviceRegisterEvents": register,
            "nvmlEventSetWait_v2": wait,
        }.items():
            monkeypatch.setattr(pynvml, name, fn)


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> ScriptedNvml:
    scripted = ScriptedNvml()
    scripted.install(monkeypatch)
    monkeypatch.setattr("voltgrid.gpu_slicer.nvml.EVENT_WAIT_MS", 1)
    return scripted


def test_missing_driver_is_a_hardware_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_library() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    with pytest.raises(HardwareError, match="NVML is not available"):
        NvmlHardware()


def test_discovery_and_event_registration(nvml: ScriptedNvml) -> None:
    hw = NvmlHardware()
    assert list(hw.gpus()) == [
        Gpu(index=0, uuid=UUIDS[0], name="NVIDIA H100 80GB HBM3", memory_bytes=80 * 1024**3),
        Gpu(index=1, uuid=UUIDS[1], name="NVIDIA H100 80GB HBM3", memory_bytes=80 * 1024**3),
    ]
    mask = pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError
    assert nvml.registered[0] & mask == mask
    assert 1 not in nvml.registered  # not supported there: sliced anyway, health from probes
    hw.close()
    assert nvml.shut_down


def nvml_event(event_type: int, data: int = 0, device: Any = None) -> Any:
    return SimpleNamespace(eventType=event_type, eventData=data, device=device)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            nvml_event(pynvml.nvmlEventTypeXidCriticalError, 79, SimpleNamespace(index=1)),
            HealthEvent(UUIDS[1], EventKind.XID, 79),
        ),
        (
            nvml_event(pynvml.nvmlEventTypeDoubleBitEccError, 0, SimpleNamespace(index=0)),
            HealthEvent(UUIDS[0], EventKind.ECC_DOUBLE_BIT),
        ),
        (
            nvml_event(pynvml.nvmlEventTypeSingleBitEccError, 0, SimpleNamespace(index=0)),
            HealthEvent(UUIDS[0], EventKind.ECC_SINGLE_BIT),
        ),
        (nvml_event(pynvml.nvmlEventTypeXidCriticalError, 48), HealthEvent(None, EventKind.XID, 48)),
        (nvml_event(pynvml.nvmlEventTypePState, 0, SimpleNamespace(index=0)), None),
    ],
)
def test_event_from(nvml: ScriptedNvml, raw: Any, expected: HealthEvent | None) -> None:
    assert event_from(raw) == expected


async def test_next_event_waits_through_timeouts_and_probe(nvml: ScriptedNvml) -> None:
    hw = NvmlHardware()
    with nvml.lock:
        nvml.events.append(nvml_event(pynvml.nvmlEventTypePState, 0, SimpleNamespace(index=0)))
        nvml.events.append(nvml_event(pynvml.nvmlEventTypeXidCriticalError, 79, SimpleNamespace(index=0)))
    assert await hw.next_event() == HealthEvent(UUIDS[0], EventKind.XID, 79)
    assert await hw.probe(UUIDS[0])
    nvml.gone.add(UUIDS[0])
    assert not await hw.probe(UUIDS[0])
    hw.close()
