"""MPS supervision: limits before advertising, restarts, and the real subprocess path against a stand-in binary."""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from voltgrid.gpu_slicer.board import HEALTHY, DeviceBoard
from voltgrid.gpu_slicer.errors import MpsError
from voltgrid.gpu_slicer.fake import FakeMps, fake_gpus
from voltgrid.gpu_slicer.mps import MPS_CHECK_INTERVAL_S, MpsDaemon, MpsSupervisor, limit_commands
from voltgrid.gpu_slicer.slices import PROFILES, MpsPaths, slice_ids

GPUS = fake_gpus(2, memory_bytes=80 * 1024**3)
QUARTER = PROFILES["quarter"]

# Behaves like nvidia-cuda-mps-control as far as the plugin can tell: `-d` starts a "daemon" (a state
# file in the pipe directory), other invocations read commands from stdin and fail without a daemon.
MPS_CONTROL_SCRIPT = f"""#!{sys.executable}
import json, os, pathlib, sys
control = pathlib.Path(os.environ["CUDA_MPS_PIPE_DIRECTORY"]) / "control"
log = pathlib.Path(os.environ["CUDA_MPS_LOG_DIRECTORY"]) / "control.log"
if sys.argv[1:] == ["-d"]:
    if control.exists():
        sys.exit("An instance of this daemon is already running")
    control.write_text(json.dumps({{"order": os.environ.get("CUDA_DEVICE_ORDER")}}))
    sys.exit(0)
if not control.exists():
    sys.exit("Cannot find MPS control daemon process")
state = json.loads(control.read_text())
for line in sys.stdin:
    verb, *args = line.split()
    with log.open("a") as f:
        f.write(line)
    if verb.startswith("set_default_"):
        state[verb] = " ".join(args)
    elif verb == "get_default_active_thread_percentage":
        print(state.get("set_default_active_thread_percentage", "100.0"))
    elif verb == "quit":
        control.unlink()
        sys.exit(0)
control.write_text(json.dumps(state))
"""


def test_limit_commands() -> None:
    assert limit_commands(GPUS, QUARTER) == [
        "set_default_device_pinned_mem_limit 0 20480M",
        "set_default_device_pinned_mem_limit 1 20480M",
        "set_default_active_thread_percentage 25",
    ]


@pytest.fixture
def board() -> DeviceBoard:
    return DeviceBoard(slice_ids(GPUS, QUARTER))


@contextlib.asynccontextmanager
async def supervise(supervisor: MpsSupervisor) -> AsyncIterator[None]:
    task = asyncio.create_task(supervisor.run())
    yield
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def healthy(board: DeviceBoard) -> bool:
    states = {h for _, h in board.snapshot()}
    assert len(states) == 1
    return states == {HEALTHY}


@pytest.mark.looptime
async def test_devices_healthy_only_once_limits_are_in_place(board: DeviceBoard) -> None:
    mps = FakeMps()
    mps.fail_start = True
    supervisor = MpsSupervisor(mps, GPUS, QUARTER, board)
    async with supervise(supervisor):
        await asyncio.sleep(3 * MPS_CHECK_INTERVAL_S)
        assert not supervisor.ready.is_set()
        assert not healthy(board)

        mps.fail_start = False
        await asyncio.wait_for(supervisor.ready.wait(), 2 * MPS_CHECK_INTERVAL_S)
        assert healthy(board)
        assert mps.defaults == {"device_pinned_mem_limit": "1 20480M", "active_thread_percentage": "25"}


@pytest.mark.looptime
async def test_dead_daemon_is_restarted_with_limits(board: DeviceBoard) -> None:
    mps = FakeMps()
    supervisor = MpsSupervisor(mps, GPUS, QUARTER, board)
    async with supervise(supervisor):
        await supervisor.ready.wait()
        mps.fail_start = True
        mps.kill()
        await asyncio.sleep(MPS_CHECK_INTERVAL_S + 1)
        assert not healthy(board)
        mps.fail_start = False
        await asyncio.sleep(MPS_CHECK_INTERVAL_S + 1)
        assert healthy(board)
        assert mps.starts == 2
        assert mps.defaults["active_thread_percentage"] == "25"


@pytest.mark.looptime
async def test_running_daemon_is_reused(board: DeviceBoard) -> None:
    mps = FakeMps()
    mps.running = True  # left over from before a plugin restart, without our limits
    supervisor = MpsSupervisor(mps, GPUS, QUARTER, board)
    async with supervise(supervisor):
        await supervisor.ready.wait()
        assert mps.starts == 0
        assert mps.defaults["active_thread_percentage"] == "25"


@pytest.fixture
def mps_control(tmp_path: Path) -> Path:
    script = tmp_path / "nvidia-cuda-mps-control"
    script.write_text(MPS_CONTROL_SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_real_daemon_path(tmp_path: Path, mps_control: Path, board: DeviceBoard) -> None:
    paths = MpsPaths(tmp_path / "mps")
    paths.create()
    daemon = MpsDaemon(paths, str(mps_control))
    supervisor = MpsSupervisor(daemon, GPUS, QUARTER, board, check_interval_s=0.05)
    async with supervise(supervisor):
        await asyncio.wait_for(supervisor.ready.wait(), 10)
        assert healthy(board)
        state = json.loads((paths.pipe / "control").read_text())
        assert state["order"] == "PCI_BUS_ID"
        assert state["set_default_active_thread_percentage"] == "25"

        # The daemon dies: devices go unhealthy, then the supervisor starts it again with the limits.
        (paths.pipe / "control").unlink()
        for _ in range(200):
            if (paths.pipe / "control").exists() and healthy(board):
                break
            await asyncio.sleep(0.05)
        assert json.loads((paths.pipe / "control").read_text())["set_default_active_thread_percentage"] == "25"
    await daemon.stop()
    assert not (paths.pipe / "control").exists()
    assert (paths.log / "control.log").read_text().splitlines()[-1] == "quit"


async def test_real_daemon_errors(tmp_path: Path, mps_control: Path) -> None:
    paths = MpsPaths(tmp_path / "mps")
    paths.create()
    with pytest.raises(MpsError, match="cannot run"):
        await MpsDaemon(paths, str(tmp_path / "missing")).start()
    daemon = MpsDaemon(paths, str(mps_control))
    with pytest.raises(MpsError, match="Cannot find MPS control daemon"):
        await daemon.command("get_default_active_thread_percentage")
    await daemon.stop()  # nothing to stop: no error
    await daemon.start()
    with pytest.raises(MpsError, match="already running"):
        await daemon.start()
