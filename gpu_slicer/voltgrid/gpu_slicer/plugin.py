"""The plugin's life: MPS limits first, then serve and register, re-register on kubelet restarts, empty out.

Order matters. Nothing is registered before the MPS daemon holds the slice limits (a container
scheduled earlier would get a whole card). On a kubelet restart the plugin serves again on a fresh
socket and registers again. On stop, every ListAndWatch stream sends an empty device list before the
server goes away, so the node's capacity drops to zero instead of lingering until the kubelet notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Final, TypeVar

from voltgrid.gpu_slicer.board import DeviceBoard
from voltgrid.gpu_slicer.errors import HardwareError, RegistrationError
from voltgrid.gpu_slicer.hardware import Hardware, MpsControl
from voltgrid.gpu_slicer.health import RECOVERY_PROBE_INTERVAL_S, RECOVERY_QUIET_PERIOD_S, HealthMonitor
from voltgrid.gpu_slicer.kubelet import (
    KUBELET_SOCKET,
    SOCKET_POLL_INTERVAL_S,
    register,
    remove_socket,
    wait_for_restart,
    wait_for_socket,
)
from voltgrid.gpu_slicer.mps import MPS_CHECK_INTERVAL_S, MpsSupervisor
from voltgrid.gpu_slicer.server import SERVER_STOP_GRACE_S, DevicePluginService, start_server
from voltgrid.gpu_slicer.settings import Settings
from voltgrid.gpu_slicer.slices import PROFILES, MpsPaths, slice_ids

log = logging.getLogger(__name__)

#: Pause before registering again after the kubelet refused or did not answer.
REGISTER_RETRY_INTERVAL_S: Final = 5.0

T = TypeVar("T")


async def _unless_stopped(stop: asyncio.Event, aw: Awaitable[T]) -> T | None:
    """Await ``aw``, or cancel it and return None as soon as ``stop`` is set."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        stopper.cancel()
        await asyncio.wait({task, stopper})
    return None if task.cancelled() else task.result()


class SlicerPlugin:
    """One node's slices of one profile, served to the kubelet until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        hardware: Hardware,
        mps: MpsControl,
        *,
        poll_interval_s: float = SOCKET_POLL_INTERVAL_S,
        mps_check_interval_s: float = MPS_CHECK_INTERVAL_S,
        recovery_quiet_period_s: float = RECOVERY_QUIET_PERIOD_S,
        recovery_probe_interval_s: float = RECOVERY_PROBE_INTERVAL_S,
    ) -> None:
        gpus = list(hardware.gpus())
        if not gpus:
            raise HardwareError("no GPUs found on this node")
        self.profile = PROFILES[settings.profile]
        self.kubelet_socket = settings.kubelet_dir / KUBELET_SOCKET
        self.socket = settings.kubelet_dir / f"voltgrid-gpu-1-{self.profile.slices_per_card}.sock"
        self.mps_paths = MpsPaths(settings.mps_root)
        self.board = DeviceBoard(slice_ids(gpus, self.profile))
        self._poll = poll_interval_s
        self._service = DevicePluginService(self.board, gpus, self.profile, self.mps_paths)
        self._mps = MpsSupervisor(mps, gpus, self.profile, self.board, mps_check_interval_s)
        self._health = HealthMonitor(
            hardware, self.board, [g.uuid for g in gpus], recovery_quiet_period_s, recovery_probe_interval_s
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then advertise no devices and stop the MPS daemon."""
        self.mps_paths.create()
        log.info("slicing %d devices as %s", len(self.board.snapshot()), self.profile.resource_name)
        async with asyncio.TaskGroup() as tg:
            mps_task = tg.create_task(self._mps.run())
            health_task = tg.create_task(self._health.run())
            try:
                await self._serve(stop)
            finally:
                mps_task.cancel()
                health_task.cancel()
        await self._mps.stop()

    async def _serve(self, stop: asyncio.Event) -> None:
        await _unless_stopped(stop, self._mps.ready.wait())
        while not stop.is_set():
            identity = await _unless_stopped(stop, wait_for_socket(self.kubelet_socket, self._poll))
            if identity is None:
                break
            server = await start_server(self._service, self.socket)
            try:
                try:
                    await register(self.kubelet_socket, self.socket.name, self.profile.resource_name)
                except RegistrationError as e:
                    log.error("%s; retrying in %ss", e, REGISTER_RETRY_INTERVAL_S)
                    await _unless_stopped(stop, asyncio.sleep(REGISTER_RETRY_INTERVAL_S))
                    continue
                log.info("registered %s with the kubelet on %s", self.profile.resource_name, self.socket)
                await _unless_stopped(stop, wait_for_restart(self.kubelet_socket, identity, self.socket, self._poll))
                if not stop.is_set():
                    log.info("kubelet restarted: serving and registering again")
            finally:
                if stop.is_set():
                    log.info("stopping: advertising no devices")
                    await self.board.close()
                    # Let every stream send its empty list before the server goes away.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(SERVER_STOP_GRACE_S):
                            await self.board.drained()
                    await server.stop(SERVER_STOP_GRACE_S)
                else:
                    await server.stop(None)
        if not self.board.closed:
            await self.board.close()
        remove_socket(self.socket)
