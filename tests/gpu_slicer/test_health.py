"""Card health from NVML events, on the virtual clock: benign XIDs ignored, recovery after a quiet period."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from voltgrid.gpu_slicer.board import HEALTHY, UNHEALTHY, DeviceBoard
from voltgrid.gpu_slicer.fake import FakeHardware, fake_gpus
from voltgrid.gpu_slicer.hardware import BENIGN_XIDS, EventKind, HealthEvent
from voltgrid.gpu_slicer.health import RECOVERY_PROBE_INTERVAL_S, RECOVERY_QUIET_PERIOD_S, HealthMonitor
from voltgrid.gpu_slicer.slices import PROFILES, slice_ids

GPUS = fake_gpus(2)
A, B = (g.uuid for g in GPUS)


@pytest.fixture
async def board() -> DeviceBoard:
    board = DeviceBoard(slice_ids(GPUS, PROFILES["half"]))
    await board.set_mps_ready(True)
    return board


@pytest.fixture
async def hardware(board: DeviceBoard) -> AsyncIterator[FakeHardware]:
    hw = FakeHardware(GPUS)
    task = asyncio.create_task(HealthMonitor(hw, board, [A, B]).run())
    yield hw
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def health(board: DeviceBoard) -> dict[str, str]:
    return dict(board.snapshot())


@pytest.mark.parametrize(
    ("event", "critical"),
    [
        *((HealthEvent(A, EventKind.XID, xid), False) for xid in sorted(BENIGN_XIDS)),
        (HealthEvent(A, EventKind.XID, 48), True),
        (HealthEvent(A, EventKind.XID, 79), True),
        (HealthEvent(A, EventKind.ECC_SINGLE_BIT), False),
        (HealthEvent(A, EventKind.ECC_DOUBLE_BIT), True),
    ],
)
def test_critical(event: HealthEvent, critical: bool) -> None:
    assert event.critical is critical


@pytest.mark.looptime
async def test_benign_xid_changes_nothing(board: DeviceBoard, hardware: FakeHardware) -> None:
    for xid in BENIGN_XIDS:
        hardware.inject(HealthEvent(A, EventKind.XID, xid))
    hardware.inject(HealthEvent(B, EventKind.ECC_SINGLE_BIT))
    await asyncio.sleep(1)
    assert set(health(board).values()) == {HEALTHY}


@pytest.mark.looptime
async def test_xid_takes_card_out_until_it_recovers(board: DeviceBoard, hardware: FakeHardware) -> None:
    hardware.inject(HealthEvent(A, EventKind.XID, 79))
    await asyncio.sleep(0.1)
    assert health(board) == {f"{A}::0": UNHEALTHY, f"{A}::1": UNHEALTHY, f"{B}::0": HEALTHY, f"{B}::1": HEALTHY}

    # Repaired at once, but only probed after the quiet period.
    hardware.repair(A)
    await asyncio.sleep(RECOVERY_QUIET_PERIOD_S - RECOVERY_PROBE_INTERVAL_S)
    assert health(board)[f"{A}::0"] == UNHEALTHY
    await asyncio.sleep(2 * RECOVERY_PROBE_INTERVAL_S)
    assert set(health(board).values()) == {HEALTHY}


@pytest.mark.looptime
async def test_card_that_keeps_failing_probes_stays_out(board: DeviceBoard, hardware: FakeHardware) -> None:
    hardware.inject(HealthEvent(B, EventKind.ECC_DOUBLE_BIT))
    await asyncio.sleep(10 * RECOVERY_QUIET_PERIOD_S)
    assert health(board)[f"{B}::1"] == UNHEALTHY
    assert health(board)[f"{A}::1"] == HEALTHY


@pytest.mark.looptime
async def test_event_without_device_concerns_every_card(board: DeviceBoard, hardware: FakeHardware) -> None:
    hardware.inject(HealthEvent(None, EventKind.XID, 79))
    await asyncio.sleep(0.1)
    assert set(health(board).values()) == {UNHEALTHY}


@pytest.mark.looptime
async def test_event_of_unknown_card_is_ignored(board: DeviceBoard, hardware: FakeHardware) -> None:
    hardware.inject(HealthEvent("GPU-other", EventKind.XID, 79))
    await asyncio.sleep(0.1)
    assert set(health(board).values()) == {HEALTHY}


async def test_board_watch_sends_changes_and_ends_empty_on_close() -> None:
    board = DeviceBoard(slice_ids(GPUS[:1], PROFILES["half"]))
    seen: list[list[tuple[str, str]]] = []

    async def watch() -> None:
        async for devices in board.watch():
            seen.append(devices)

    task = asyncio.create_task(watch())
    await asyncio.sleep(0)
    await board.set_mps_ready(True)
    await asyncio.sleep(0)
    await board.close()
    await asyncio.wait_for(task, 1)
    assert seen == [
        [(f"{A}::0", UNHEALTHY), (f"{A}::1", UNHEALTHY)],
        [(f"{A}::0", HEALTHY), (f"{A}::1", HEALTHY)],
        [],
    ]


async def test_board_close_while_a_watcher_is_between_lists_still_sends_the_empty_one() -> None:
    board = DeviceBoard(slice_ids(GPUS[:1], PROFILES["half"]))
    watch = board.watch()
    assert len(await anext(watch)) == 2
    await board.close()  # the watcher has not come back for the next list yet
    assert await anext(watch) == []
    with pytest.raises(StopAsyncIteration):
        await anext(watch)
    await asyncio.wait_for(board.drained(), 1)
