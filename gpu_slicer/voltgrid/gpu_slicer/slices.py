"""Slice profiles, device ids, packing and the Allocate answer: pure functions, tested as tables.

A profile cuts every card of a node into ``n`` equal slices, advertised as ``voltgrid.dev/gpu-1-<n>``
(the name comes from :mod:`voltgrid.api.gpu`, which the operator uses too). Each slice is one kubelet
device ``<GPU-UUID>::<k>``. A slice's limits are enforced by MPS: ``1/n`` of the card's memory as the
pinned device memory limit and ``100/n`` percent of its SMs as the active thread percentage.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from voltgrid.api.gpu import slice_resource_name
from voltgrid.gpu_slicer.hardware import Gpu

MIB: Final = 1024 * 1024
DEVICE_SEPARATOR: Final = "::"
#: Where MPS clients look for the daemon's pipes (CUDA's default, so clients that ignore the env work).
CONTAINER_PIPE_DIR: Final = "/tmp/nvidia-mps"
#: MPS clients and the server share memory through /dev/shm, so containers get the daemon's.
CONTAINER_SHM_DIR: Final = "/dev/shm"


@dataclass(frozen=True)
class Profile:
    """Every card of the node cut into ``slices_per_card`` equal slices."""

    name: str
    slices_per_card: int

    @property
    def resource_name(self) -> str:
        return slice_resource_name(self.slices_per_card)

    @property
    def thread_percentage(self) -> int:
        """Share of the card's SMs one slice may use (MPS active thread percentage)."""
        return 100 // self.slices_per_card

    def memory_limit_mib(self, gpu: Gpu) -> int:
        """Device memory one slice of ``gpu`` may pin, in MiB."""
        return gpu.memory_bytes // self.slices_per_card // MIB


PROFILES: Final = {p.name: p for p in (Profile("eighth", 8), Profile("quarter", 4), Profile("half", 2))}


def device_id(uuid: str, index: int) -> str:
    return f"{uuid}{DEVICE_SEPARATOR}{index}"


def parse_device_id(device: str) -> tuple[str, int]:
    """``"GPU-x::3"`` -> ``("GPU-x", 3)``; ValueError for anything else."""
    uuid, sep, index = device.rpartition(DEVICE_SEPARATOR)
    if not sep or not uuid or not index.isdigit():
        raise ValueError(f"device id {device!r} is not <GPU-UUID>{DEVICE_SEPARATOR}<n>")
    return uuid, int(index)


def slice_ids(gpus: Sequence[Gpu], profile: Profile) -> list[str]:
    """Every device this node advertises, card by card."""
    return [device_id(g.uuid, k) for g in gpus for k in range(profile.slices_per_card)]


def _by_card(devices: Iterable[str]) -> dict[str, list[str]]:
    cards: dict[str, list[str]] = {}
    for dev in sorted(devices, key=parse_device_id):
        cards.setdefault(parse_device_id(dev)[0], []).append(dev)
    return cards


def preferred_allocation(available: Sequence[str], must_include: Sequence[str], size: int) -> list[str]:
    """Choose ``size`` devices from ``available``, packing them on as few cards as possible.

    The devices in ``must_include`` come first; the rest fill their cards before any other. Otherwise
    the card with the fewest free slices that still fits the whole request wins (best fit, which keeps
    big holes free for big requests); when no card fits, the freest cards are used first.
    """
    chosen = list(dict.fromkeys(must_include))
    wanted = size - len(chosen)
    if wanted <= 0:
        return chosen[:size]
    free = _by_card(d for d in set(available) - set(chosen))
    pinned = {parse_device_id(d)[0] for d in chosen}
    # Fill the cards must_include already uses, freest first.
    for card in sorted(pinned & free.keys(), key=lambda c: (-len(free[c]), c)):
        take = free.pop(card)[:wanted]
        chosen.extend(take)
        wanted -= len(take)
        if wanted == 0:
            return chosen
    while wanted and free:
        fits = [card for card, devs in free.items() if len(devs) >= wanted]
        card = min(fits, key=lambda c: len(free[c])) if fits else max(free, key=lambda c: len(free[c]))
        take = free.pop(card)[:wanted]
        chosen.extend(take)
        wanted -= len(take)
    return chosen


@dataclass(frozen=True)
class MpsPaths:
    """Host directories of the MPS daemon; containers see them at CUDA's default paths."""

    root: Path

    @property
    def pipe(self) -> Path:
        return self.root / "pipe"

    @property
    def shm(self) -> Path:
        return self.root / "shm"

    @property
    def log(self) -> Path:
        return self.root / "log"

    def create(self) -> None:
        """Create the directories: the daemon needs them, and the kubelet mounts them into containers."""
        for path in (self.pipe, self.shm, self.log):
            path.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Mount:
    container_path: str
    host_path: str
    read_only: bool = False


@dataclass(frozen=True)
class ContainerAllocation:
    """What the kubelet adds to a container given ``devices``: environment and mounts."""

    envs: dict[str, str]
    mounts: list[Mount]


def container_allocation(
    devices: Sequence[str], gpus: Mapping[str, Gpu], profile: Profile, mps: MpsPaths
) -> ContainerAllocation:
    """The Allocate answer for one container; ValueError names a device this node does not have.

    The container sees its cards (by UUID, so ordinals inside are 0..k-1 in NVML order), the MPS pipe
    and shared memory of the node's daemon, and its limits: per card, the slices it holds times one
    slice's memory; the thread percentage of its largest share of one card.
    """
    per_card: dict[str, int] = {}
    for dev in devices:
        uuid, index = parse_device_id(dev)
        if uuid not in gpus or index >= profile.slices_per_card:
            raise ValueError(f"device {dev!r} is not a {profile.resource_name} device of this node")
        per_card[uuid] = per_card.get(uuid, 0) + 1
    if not per_card:
        raise ValueError("no devices to allocate")
    cards = sorted(per_card, key=lambda u: gpus[u].index)
    visible = ",".join(cards)
    mem = ",".join(f"{ordinal}={per_card[u] * profile.memory_limit_mib(gpus[u])}M" for ordinal, u in enumerate(cards))
    threads = min(100, max(per_card.values()) * profile.thread_percentage)
    envs = {
        "NVIDIA_VISIBLE_DEVICES": visible,
        "CUDA_VISIBLE_DEVICES": visible,
        "CUDA_MPS_PIPE_DIRECTORY": CONTAINER_PIPE_DIR,
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": mem,
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(threads),
    }
    mounts = [
        Mount(container_path=CONTAINER_PIPE_DIR, host_path=str(mps.pipe)),
        Mount(container_path=CONTAINER_SHM_DIR, host_path=str(mps.shm)),
    ]
    return ContainerAllocation(envs=envs, mounts=mounts)
