"""Table tests of slice profiles, device ids, packing (GetPreferredAllocation) and Allocate answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from voltgrid.api.gpu import runtime_can_use_gpu, slice_resource_for
from voltgrid.gpu_slicer.fake import fake_gpus
from voltgrid.gpu_slicer.slices import (
    PROFILES,
    MpsPaths,
    container_allocation,
    device_id,
    parse_device_id,
    preferred_allocation,
    slice_ids,
)

GPUS = fake_gpus(3)
A, B, C = (g.uuid for g in GPUS)
QUARTER = PROFILES["quarter"]


def ids(uuid: str, *slices: int) -> list[str]:
    return [device_id(uuid, n) for n in slices]


@pytest.mark.parametrize(
    ("gpu", "expected"),
    [
        (0, None),
        (0.125, ("voltgrid.dev/gpu-1-8", 1)),
        (0.25, ("voltgrid.dev/gpu-1-4", 1)),
        (0.5, ("voltgrid.dev/gpu-1-2", 1)),
        (1, ("nvidia.com/gpu", 1)),
        (3.0, ("nvidia.com/gpu", 3)),
    ],
)
def test_slice_resource_for(gpu: float, expected: tuple[str, int] | None) -> None:
    assert slice_resource_for(gpu) == expected


@pytest.mark.parametrize("gpu", [0.3, 1.5, -1])
def test_slice_resource_for_rejects_unsupported_fractions(gpu: float) -> None:
    with pytest.raises(ValueError, match="whole number"):
        slice_resource_for(gpu)


@pytest.mark.parametrize(
    ("gpu", "runtime", "ok"),
    [
        (0.25, None, True),
        (0.25, "gvisor", True),
        (0.25, "kata-qemu", False),
        (1, "kata-fc", True),
        (0, "kata-clh", True),
    ],
)
def test_runtime_can_use_gpu(gpu: float, runtime: str | None, ok: bool) -> None:
    assert runtime_can_use_gpu(gpu, runtime) is ok


@pytest.mark.parametrize(
    ("profile", "resource", "threads", "mem_mib"),
    [
        ("eighth", "voltgrid.dev/gpu-1-8", 12, 2048),
        ("quarter", "voltgrid.dev/gpu-1-4", 25, 4096),
        ("half", "voltgrid.dev/gpu-1-2", 50, 8192),
    ],
)
def test_profiles(profile: str, resource: str, threads: int, mem_mib: int) -> None:
    p = PROFILES[profile]
    assert (p.resource_name, p.thread_percentage, p.memory_limit_mib(GPUS[0])) == (resource, threads, mem_mib)
    devices = slice_ids(GPUS, p)
    assert len(devices) == 3 * p.slices_per_card
    assert devices[0] == f"{A}::0"
    assert all(len(d) <= 63 for d in devices)  # the kubelet's limit on device ids


@pytest.mark.parametrize("bad", ["GPU-x", "GPU-x::", "::1", "GPU-x::a", "GPU-x::-1"])
def test_parse_device_id_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="not <GPU-UUID>::<n>"):
        parse_device_id(bad)


def test_parse_device_id_round_trips() -> None:
    assert parse_device_id(device_id(A, 7)) == (A, 7)


@pytest.mark.parametrize(
    ("available", "must", "size", "expected"),
    [
        # Best fit: the card with the fewest free slices that still holds the request.
        (ids(A, 0, 1, 2, 3) + ids(B, 2, 3), [], 2, ids(B, 2, 3)),
        (ids(A, 0, 1, 2, 3) + ids(B, 3), [], 2, ids(A, 0, 1)),
        (ids(A, 1, 2, 3) + ids(B, 0, 1, 2, 3) + ids(C, 3), [], 3, ids(A, 1, 2, 3)),
        (ids(A, 1, 2, 3) + ids(B, 0, 1, 2, 3) + ids(C, 3), [], 1, ids(C, 3)),
        # Ties go to the first card.
        (ids(A, 0, 1) + ids(B, 0, 1), [], 1, ids(A, 0)),
        # Nothing fits on one card: the freest cards first.
        (ids(A, 0) + ids(B, 0, 1, 2) + ids(C, 0, 1), [], 5, ids(B, 0, 1, 2) + ids(C, 0, 1)),
        # must_include comes first, and its card is filled before any other.
        (ids(A, 0, 1, 2, 3) + ids(B, 0, 1), ids(A, 0), 3, ids(A, 0, 1, 2)),
        (ids(A, 0, 1) + ids(B, 0, 1, 2, 3) + ids(C, 2), ids(A, 0), 3, ids(A, 0, 1) + ids(C, 2)),
        (ids(A, 0, 1), ids(A, 0, 1), 2, ids(A, 0, 1)),
        # Fewer available than asked for: all of them (the kubelet decides what to do).
        (ids(A, 0), [], 2, ids(A, 0)),
        ([], [], 1, []),
    ],
)
def test_preferred_allocation(available: list[str], must: list[str], size: int, expected: list[str]) -> None:
    assert preferred_allocation(available, must, size) == expected


def test_preferred_allocation_order_of_input_does_not_matter() -> None:
    available = ids(B, 3, 1) + ids(A, 2, 0, 1, 3)
    assert preferred_allocation(available, [], 2) == ids(B, 1, 3)


MPS = MpsPaths(Path("/run/voltgrid/mps"))
BY_UUID = {g.uuid: g for g in GPUS}


@pytest.mark.parametrize(
    ("devices", "visible", "mem", "threads"),
    [
        (ids(A, 2), A, "0=4096M", "25"),
        (ids(B, 0, 3), B, "0=8192M", "50"),
        (ids(C, 0, 1, 2, 3), C, "0=16384M", "100"),
        # Spread over two cards (the kubelet may ignore the preference): ordinals follow NVML order.
        (ids(C, 1) + ids(A, 0, 1), f"{A},{C}", "0=8192M,1=4096M", "50"),
    ],
)
def test_container_allocation(devices: list[str], visible: str, mem: str, threads: str) -> None:
    alloc = container_allocation(devices, BY_UUID, QUARTER, MPS)
    assert alloc.envs == {
        "NVIDIA_VISIBLE_DEVICES": visible,
        "CUDA_VISIBLE_DEVICES": visible,
        "CUDA_MPS_PIPE_DIRECTORY": "/tmp/nvidia-mps",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": mem,
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": threads,
    }
    assert [(m.host_path, m.container_path) for m in alloc.mounts] == [
        ("/run/voltgrid/mps/pipe", "/tmp/nvidia-mps"),
        ("/run/voltgrid/mps/shm", "/dev/shm"),
    ]


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ([], "no devices"),
        (["GPU-nope::0"], "not a voltgrid.dev/gpu-1-4 device"),
        (ids(A, 4), "not a"),
        (["x"], "not <GPU"),
    ],
)
def test_container_allocation_rejects(devices: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        container_allocation(devices, BY_UUID, QUARTER, MPS)
