"""What the slicer needs from the GPU stack, as Protocols, so tests and GPU-less nodes can use fakes.

Two seams: :class:`Hardware` (NVML: discovery, health events, probes) and :class:`MpsControl` (the MPS
control daemon). The real implementations are :mod:`.nvml` and :mod:`.mps`; :mod:`.fake` stands in for
both. Which events make a card unhealthy is decided here, once, for every implementation.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

#: XIDs caused by the application, not the card (NVIDIA's device plugin ignores the same set):
#: 13 graphics engine exception, 31 GPU memory page fault, 43 GPU stopped processing,
#: 45 preemptive cleanup, 68 video processor exception, 109 context switch timeout.
BENIGN_XIDS: Final = frozenset({13, 31, 43, 45, 68, 109})


@dataclass(frozen=True)
class Gpu:
    """One physical card as NVML reports it; ``index`` is NVML's (PCI bus) order."""

    index: int
    uuid: str
    name: str
    memory_bytes: int


class EventKind(enum.StrEnum):
    XID = "xid"
    ECC_SINGLE_BIT = "ecc-single-bit"
    ECC_DOUBLE_BIT = "ecc-double-bit"


@dataclass(frozen=True)
class HealthEvent:
    """An NVML event; ``uuid`` None means the event names no device and concerns every card."""

    uuid: str | None
    kind: EventKind
    xid: int = 0

    @property
    def critical(self) -> bool:
        """Whether the card must stop taking work: an uncorrectable ECC error or a non-benign XID."""
        if self.kind is EventKind.XID:
            return self.xid not in BENIGN_XIDS
        return self.kind is EventKind.ECC_DOUBLE_BIT


class Hardware(Protocol):
    """The GPUs of this node."""

    def gpus(self) -> Sequence[Gpu]:
        """All cards, in NVML index order."""
        ...

    async def next_event(self) -> HealthEvent:
        """Wait for the next health event of any card."""
        ...

    async def probe(self, uuid: str) -> bool:
        """Whether the card answers queries again (used to bring an unhealthy card back)."""
        ...

    def close(self) -> None:
        """Release NVML."""
        ...


class MpsControl(Protocol):
    """The MPS control daemon (``nvidia-cuda-mps-control``) of this node."""

    async def start(self) -> None:
        """Start the daemon (``-d``); raises MpsError when it does not come up."""
        ...

    async def command(self, line: str) -> str:
        """Send one control command and return its answer; raises MpsError when it fails."""
        ...

    async def stop(self) -> None:
        """Ask the daemon to quit (no error when it is already gone)."""
        ...
