"""A fake kubelet (the Registration service on kubelet.sock, grpc.aio) and a running plugin, for gRPC tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from voltgrid.gpu_slicer.api import deviceplugin_pb2 as pb
from voltgrid.gpu_slicer.api import deviceplugin_pb2_grpc as pb_grpc
from voltgrid.gpu_slicer.fake import FakeHardware, FakeMps
from voltgrid.gpu_slicer.plugin import SlicerPlugin

#: How long a test waits for the plugin to register.
REGISTRATION_WAIT_S = 5
#: Real-time intervals for the plugin under test (the production values are seconds).
FAST = {
    "poll_interval_s": 0.02,
    "mps_check_interval_s": 0.02,
    "recovery_quiet_period_s": 0.1,
    "recovery_probe_interval_s": 0.02,
}


class FakeKubelet(pb_grpc.RegistrationServicer):
    """Accepts registrations like the kubelet; :meth:`restart` wipes the directory like the kubelet does."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.registrations: asyncio.Queue[pb.RegisterRequest] = asyncio.Queue()
        self.refuse = False
        self._server: Any = None

    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.Empty:
        if self.refuse:
            context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            context.set_details("resource name already taken")
            return pb.Empty()
        self.registrations.put_nowait(request)
        return pb.Empty()

    async def start(self) -> None:
        self._server = grpc.aio.server()
        pb_grpc.add_RegistrationServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        self._server.add_insecure_port(f"unix://{self.directory / 'kubelet.sock'}")
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(None)

    async def restart(self) -> None:
        await self.stop()
        for path in self.directory.iterdir():
            path.unlink()
        await self.start()

    async def registered(self) -> pb.RegisterRequest:
        async with asyncio.timeout(REGISTRATION_WAIT_S):
            return await self.registrations.get()

    @contextlib.asynccontextmanager
    async def plugin(self, endpoint: str) -> AsyncIterator[Any]:
        """A DevicePlugin client on the plugin's socket, as the kubelet dials it."""
        async with grpc.aio.insecure_channel(f"unix://{self.directory / endpoint}") as channel:
            yield pb_grpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]


@dataclass
class Running:
    plugin: SlicerPlugin
    hardware: FakeHardware
    mps: FakeMps
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)
