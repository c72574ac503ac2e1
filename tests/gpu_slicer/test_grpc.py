"""The plugin over real gRPC on unix sockets, against a fake kubelet: the kubelet's view of the plugin."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from slicer_harness import FakeKubelet, Running

from voltgrid.gpu_slicer.api import deviceplugin_pb2 as pb
from voltgrid.gpu_slicer.hardware import EventKind, HealthEvent

ENDPOINT = "voltgrid-gpu-1-4.sock"


async def next_list(stream: Any) -> dict[str, str]:
    response = await asyncio.wait_for(stream.read(), 5)
    assert response is not grpc.aio.EOF
    return {d.ID: d.health for d in response.devices}


async def test_registers_and_serves(kubelet: FakeKubelet, running: Running) -> None:
    request = await kubelet.registered()
    assert request.version == "v1beta1"
    assert request.endpoint == ENDPOINT
    assert request.resource_name == "voltgrid.dev/gpu-1-4"
    assert request.options.get_preferred_allocation_available
    assert not request.options.pre_start_required
    # Registered only after the MPS daemon holds the slice limits.
    assert running.mps.defaults["active_thread_percentage"] == "25"

    async with kubelet.plugin(request.endpoint) as plugin:
        options = await plugin.GetDevicePluginOptions(pb.Empty())
        assert options.get_preferred_allocation_available
        devices = await next_list(plugin.ListAndWatch(pb.Empty()))
    gpus = [g.uuid for g in running.hardware.gpus()]
    assert devices == {f"{uuid}::{n}": "Healthy" for uuid in gpus for n in range(4)}


async def test_preferred_allocation_and_allocate(kubelet: FakeKubelet, running: Running) -> None:
    await kubelet.registered()
    a, b = (g.uuid for g in running.hardware.gpus())
    async with kubelet.plugin(ENDPOINT) as plugin:
        preferred = await plugin.GetPreferredAllocation(
            pb.PreferredAllocationRequest(
                container_requests=[
                    pb.ContainerPreferredAllocationRequest(
                        available_deviceIDs=[f"{a}::{n}" for n in range(4)] + [f"{b}::2", f"{b}::3"],
                        allocation_size=2,
                    )
                ]
            )
        )
        chosen = list(preferred.container_responses[0].deviceIDs)
        assert chosen == [f"{b}::2", f"{b}::3"]

        response = await plugin.Allocate(
            pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=chosen)])
        )
        container = response.container_responses[0]
        assert dict(container.envs) == {
            "NVIDIA_VISIBLE_DEVICES": b,
            "CUDA_VISIBLE_DEVICES": b,
            "CUDA_MPS_PIPE_DIRECTORY": "/tmp/nvidia-mps",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=8192M",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
        }
        mps_root = running.plugin.mps_paths.root
        assert [(m.host_path, m.container_path) for m in container.mounts] == [
            (str(mps_root / "pipe"), "/tmp/nvidia-mps"),
            (str(mps_root / "shm"), "/dev/shm"),
        ]
        assert (mps_root / "pipe").is_dir()
        assert (mps_root / "shm").is_dir()

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await plugin.Allocate(
                pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=["GPU-gone::0"])])
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "GPU-gone::0" in (err.value.details() or "")

        assert await plugin.PreStartContainer(pb.PreStartContainerRequest()) == pb.PreStartContainerResponse()


async def test_xid_marks_card_unhealthy_in_stream_until_it_recovers(kubelet: FakeKubelet, running: Running) -> None:
    await kubelet.registered()
    a, b = (g.uuid for g in running.hardware.gpus())
    async with kubelet.plugin(ENDPOINT) as plugin:
        stream = plugin.ListAndWatch(pb.Empty())
        assert set((await next_list(stream)).values()) == {"Healthy"}

        running.hardware.inject(HealthEvent(a, EventKind.XID, 79))
        devices = await next_list(stream)
        assert {dev: h for dev, h in devices.items() if h == "Unhealthy"} == {
            f"{a}::{n}": "Unhealthy" for n in range(4)
        }
        assert all(h == "Healthy" for dev, h in devices.items() if dev.startswith(b))

        running.hardware.repair(a)
        assert set((await next_list(stream)).values()) == {"Healthy"}
        stream.cancel()


async def test_mps_death_takes_devices_out_until_restarted(kubelet: FakeKubelet, running: Running) -> None:
    await kubelet.registered()
    async with kubelet.plugin(ENDPOINT) as plugin:
        stream = plugin.ListAndWatch(pb.Empty())
        assert set((await next_list(stream)).values()) == {"Healthy"}
        running.mps.fail_start = True
        running.mps.kill()
        assert set((await next_list(stream)).values()) == {"Unhealthy"}
        running.mps.fail_start = False
        assert set((await next_list(stream)).values()) == {"Healthy"}
        assert running.mps.starts == 2
        stream.cancel()


async def test_kubelet_restart_re_registers(
    kubelet: FakeKubelet, running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The restart may cut off the answer to the first Register call: then the plugin retries.
    monkeypatch.setattr("voltgrid.gpu_slicer.plugin.REGISTER_RETRY_INTERVAL_S", 0.05)
    await kubelet.registered()
    await kubelet.restart()  # new kubelet.sock; the plugin's socket is wiped
    request = await kubelet.registered()
    assert request.resource_name == "voltgrid.dev/gpu-1-4"
    async with kubelet.plugin(request.endpoint) as plugin:
        assert len(await next_list(plugin.ListAndWatch(pb.Empty()))) == 8


async def test_registration_refused_is_retried(
    kubelet: FakeKubelet, running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("voltgrid.gpu_slicer.plugin.REGISTER_RETRY_INTERVAL_S", 0.05)
    kubelet.refuse = True
    await kubelet.restart()
    await asyncio.sleep(0.3)
    assert kubelet.registrations.qsize() <= 1  # at most the first, before the refusal began
    while not kubelet.registrations.empty():
        kubelet.registrations.get_nowait()
    kubelet.refuse = False
    assert (await kubelet.registered()).endpoint == ENDPOINT


async def test_shutdown_sends_empty_list_and_removes_socket(kubelet: FakeKubelet, running: Running) -> None:
    await kubelet.registered()
    async with kubelet.plugin(ENDPOINT) as plugin:
        stream = plugin.ListAndWatch(pb.Empty())
        assert len(await next_list(stream)) == 8
        running.stop.set()
        assert await next_list(stream) == {}
        assert await stream.read() is grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK
    await asyncio.wait_for(running.task, 5)
    assert not (kubelet.directory / ENDPOINT).exists()
    assert not running.mps.running
