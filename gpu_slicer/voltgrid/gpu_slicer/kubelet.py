"""Talking to the kubelet: registering on ``kubelet.sock`` and noticing when the kubelet restarts.

A restarting kubelet re-creates ``kubelet.sock`` (a new inode) and wipes the other sockets in the
directory, forgetting every plugin; it never calls plugins back. So the plugin watches the socket's
identity and, when it changes or its own socket is gone, serves again and re-registers. Polling a stat
every :data:`SOCKET_POLL_INTERVAL_S` is enough for that and needs no inotify binding.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Final

import grpc

from voltgrid.gpu_slicer.api import deviceplugin_pb2 as pb
from voltgrid.gpu_slicer.api import deviceplugin_pb2_grpc as pb_grpc
from voltgrid.gpu_slicer.errors import RegistrationError

API_VERSION: Final = "v1beta1"
KUBELET_SOCKET: Final = "kubelet.sock"
DEFAULT_KUBELET_DIR: Final = Path("/var/lib/kubelet/device-plugins")
#: How often the kubelet socket (and our own) is looked at.
SOCKET_POLL_INTERVAL_S: Final = 1.0
#: Longest a Register call may take.
REGISTER_TIMEOUT_S: Final = 10.0

#: A file's identity: it changes when the file is removed and created again.
SocketIdentity = tuple[int, int, int]


def socket_identity(path: Path) -> SocketIdentity | None:
    """(device, inode, ctime) of ``path``; None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


def remove_socket(path: Path) -> None:
    """Remove a socket file left by an earlier run (a unix socket cannot be bound over)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def wait_for_socket(path: Path, interval_s: float = SOCKET_POLL_INTERVAL_S) -> SocketIdentity:
    """Wait until ``path`` exists and return its identity."""
    while True:
        if (ident := socket_identity(path)) is not None:
            return ident
        await asyncio.sleep(interval_s)


async def wait_for_restart(
    kubelet_socket: Path, identity: SocketIdentity, own_socket: Path, interval_s: float = SOCKET_POLL_INTERVAL_S
) -> None:
    """Return once ``kubelet_socket`` is no longer the file ``identity`` names, or ``own_socket`` is gone."""
    while True:
        if socket_identity(kubelet_socket) != identity or socket_identity(own_socket) is None:
            return
        await asyncio.sleep(interval_s)


async def register(kubelet_socket: Path, endpoint: str, resource_name: str) -> None:
    """Register the plugin serving ``endpoint`` (a socket name in the same directory) for ``resource_name``."""
    request = pb.RegisterRequest(
        version=API_VERSION,
        endpoint=endpoint,
        resource_name=resource_name,
        options=pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True),
    )
    async with grpc.aio.insecure_channel(f"unix://{kubelet_socket}") as channel:
        stub = pb_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
        try:
            await stub.Register(request, timeout=REGISTER_TIMEOUT_S, wait_for_ready=True)
        except grpc.aio.AioRpcError as e:
            raise RegistrationError(f"kubelet refused {resource_name}: {e.code().name} {e.details()}") from e
