"""The DevicePlugin gRPC service the kubelet calls on the plugin's own socket.

Thin: each method translates protobuf to the pure functions of :mod:`.slices` and the :class:`DeviceBoard`
and back. Bad device ids (which only a confused kubelet would send) are answered with INVALID_ARGUMENT.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

import grpc

from voltgrid.gpu_slicer.api import deviceplugin_pb2 as pb
from voltgrid.gpu_slicer.api import deviceplugin_pb2_grpc as pb_grpc
from voltgrid.gpu_slicer.board import DeviceBoard
from voltgrid.gpu_slicer.hardware import Gpu
from voltgrid.gpu_slicer.kubelet import remove_socket
from voltgrid.gpu_slicer.slices import MpsPaths, Profile, container_allocation, preferred_allocation

log = logging.getLogger(__name__)

#: How long in-flight calls (the ListAndWatch streams sending their last, empty list) get on stop.
SERVER_STOP_GRACE_S: Final = 2.0


def _invalid(context: Any, error: ValueError) -> None:
    """Answer the call with INVALID_ARGUMENT (the response returned with it is dropped)."""
    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
    context.set_details(str(error))


class DevicePluginService(pb_grpc.DevicePluginServicer):
    """One resource's devices: list, prefer, allocate."""

    def __init__(self, board: DeviceBoard, gpus: Sequence[Gpu], profile: Profile, mps: MpsPaths) -> None:
        self._board = board
        self._gpus = {g.uuid: g for g in gpus}
        self._profile = profile
        self._mps = mps

    async def GetDevicePluginOptions(self, request: pb.Empty, context: Any) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)

    async def ListAndWatch(self, request: pb.Empty, context: Any) -> AsyncIterator[pb.ListAndWatchResponse]:
        async for devices in self._board.watch():
            log.info("advertising %d devices (%d healthy)", len(devices), sum(h == "Healthy" for _, h in devices))
            yield pb.ListAndWatchResponse(devices=[pb.Device(ID=dev, health=health) for dev, health in devices])

    async def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: Any
    ) -> pb.PreferredAllocationResponse:
        try:
            responses = [
                pb.ContainerPreferredAllocationResponse(
                    deviceIDs=preferred_allocation(
                        list(req.available_deviceIDs), list(req.must_include_deviceIDs), req.allocation_size
                    )
                )
                for req in request.container_requests
            ]
        except ValueError as e:
            _invalid(context, e)
            return pb.PreferredAllocationResponse()
        return pb.PreferredAllocationResponse(container_responses=responses)

    def _allocate(self, devices: Sequence[str]) -> pb.ContainerAllocateResponse:
        alloc = container_allocation(devices, self._gpus, self._profile, self._mps)
        log.info("allocating %s", ",".join(devices))
        return pb.ContainerAllocateResponse(
            envs=alloc.envs,
            mounts=[
                pb.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
                for m in alloc.mounts
            ],
        )

    async def Allocate(self, request: pb.AllocateRequest, context: Any) -> pb.AllocateResponse:
        try:
            responses = [self._allocate(list(req.devices_ids)) for req in request.container_requests]
        except ValueError as e:
            _invalid(context, e)
            return pb.AllocateResponse()
        return pb.AllocateResponse(container_responses=responses)

    async def PreStartContainer(
        self, request: pb.PreStartContainerRequest, context: Any
    ) -> pb.PreStartContainerResponse:
        # Not requested at registration (pre_start_required=False); answered for completeness of the API.
        return pb.PreStartContainerResponse()


async def start_server(service: DevicePluginService, socket: Path) -> Any:
    """Serve ``service`` on the unix socket ``socket`` (a stale file there is replaced); returns the server."""
    remove_socket(socket)
    server = grpc.aio.server()
    pb_grpc.add_DevicePluginServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    return server
