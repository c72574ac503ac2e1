"""The MPS control daemon: started and supervised by the plugin, the place where slice limits are enforced.

Environment variables in a container are only requests; the limits that hold are the daemon's defaults
for every new client: ``set_default_device_pinned_mem_limit`` (one slice of memory per card) and
``set_default_active_thread_percentage`` (one slice of SMs). :class:`MpsSupervisor` sets them before any
device is advertised, checks them on an interval (a daemon restarted behind our back comes up without
them) and takes the devices out of service while they are not in place.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Final

from voltgrid.gpu_slicer.board import DeviceBoard
from voltgrid.gpu_slicer.errors import MpsError
from voltgrid.gpu_slicer.hardware import Gpu, MpsControl
from voltgrid.gpu_slicer.slices import MpsPaths, Profile

log = logging.getLogger(__name__)

DEFAULT_MPS_CONTROL: Final = "nvidia-cuda-mps-control"
#: Longest a control command (or the ``-d`` start, which forks and returns) may take.
MPS_COMMAND_TIMEOUT_S: Final = 10.0
#: How often the daemon and its limits are checked.
MPS_CHECK_INTERVAL_S: Final = 5.0


class MpsDaemon:
    """:class:`~voltgrid.gpu_slicer.hardware.MpsControl` over the real ``nvidia-cuda-mps-control`` binary."""

    def __init__(self, paths: MpsPaths, binary: str = DEFAULT_MPS_CONTROL) -> None:
        self._paths = paths
        self._binary = binary

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "CUDA_MPS_PIPE_DIRECTORY": str(self._paths.pipe),
            "CUDA_MPS_LOG_DIRECTORY": str(self._paths.log),
            # CUDA ordinals in PCI bus order, the order of NVML's indexes used in the limit commands.
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        }

    async def _run(self, args: Sequence[str], stdin: str | None) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(
                self._binary,
                *args,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(),
            )
        except OSError as e:
            raise MpsError(f"cannot run {self._binary}: {e}") from e
        try:
            async with asyncio.timeout(MPS_COMMAND_TIMEOUT_S):
                out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise MpsError(f"{self._binary} {' '.join(args)} took over {MPS_COMMAND_TIMEOUT_S}s") from None
        if proc.returncode != 0:
            what = " ".join(args) or (stdin or "").strip()
            raise MpsError(f"{self._binary} {what} failed ({proc.returncode}): {(err or out).decode().strip()}")
        return out.decode()

    async def start(self) -> None:
        await self._run(["-d"], None)

    async def command(self, line: str) -> str:
        return await self._run([], line + "\n")

    async def stop(self) -> None:
        try:
            await self.command("quit")
        except MpsError as e:
            log.info("MPS daemon did not quit cleanly: %s", e)


def limit_commands(gpus: Sequence[Gpu], profile: Profile) -> list[str]:
    """The control commands that make every new MPS client one slice of its card."""
    return [
        *(f"set_default_device_pinned_mem_limit {g.index} {profile.memory_limit_mib(g)}M" for g in gpus),
        f"set_default_active_thread_percentage {profile.thread_percentage}",
    ]


class MpsSupervisor:
    """Keeps the daemon running with the slice limits, and the board's MPS readiness in step with it."""

    def __init__(
        self,
        control: MpsControl,
        gpus: Sequence[Gpu],
        profile: Profile,
        board: DeviceBoard,
        check_interval_s: float = MPS_CHECK_INTERVAL_S,
    ) -> None:
        self._control = control
        self._commands = limit_commands(gpus, profile)
        self._threads = profile.thread_percentage
        self._board = board
        self._interval = check_interval_s
        #: Set once the limits were first in place: the plugin registers only after that.
        self.ready = asyncio.Event()

    async def _limits_in_place(self) -> bool:
        try:
            answer = await self._control.command("get_default_active_thread_percentage")
        except MpsError:
            return False
        try:
            return float(answer.strip()) == self._threads
        except ValueError:
            return False

    async def _bring_up(self) -> None:
        try:
            await self._control.start()
        except MpsError as e:
            # A daemon that is already running (e.g. from before a plugin restart) refuses a second start.
            if not await self._control_answers():
                raise
            log.info("MPS daemon already running (%s)", e)
        for cmd in self._commands:
            await self._control.command(cmd)

    async def _control_answers(self) -> bool:
        try:
            await self._control.command("get_default_active_thread_percentage")
        except MpsError:
            return False
        return True

    async def run(self) -> None:
        """Bring the daemon up and keep it so until cancelled."""
        while True:
            if not await self._limits_in_place():
                await self._board.set_mps_ready(False)
                try:
                    await self._bring_up()
                except MpsError as e:
                    log.error("MPS daemon not ready, devices stay unhealthy: %s", e)
                else:
                    log.info("MPS daemon up with slice limits")
                    await self._board.set_mps_ready(True)
                    self.ready.set()
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        await self._control.stop()
