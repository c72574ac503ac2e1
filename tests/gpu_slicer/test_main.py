"""``voltgrid gpu-slicer`` as a process: exit codes, and a --fake run stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc
import pynvml
import pytest
from slicer_harness import FakeKubelet

from voltgrid.gpu_slicer.api import deviceplugin_pb2 as pb
from voltgrid.gpu_slicer.main import main

#: Longest the plugin process may take to exit after SIGTERM.
EXIT_WAIT_S = 10


def test_bad_settings_exit_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLTGRID_GPU_SLICER_FAKE_GPUS", "0")
    assert main(["--fake"]) == 2
    assert "fake_gpus 0 must be between 1 and 64" in capsys.readouterr().err


def test_no_driver_exits_1(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def no_library() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_library)
    assert main(["--kubelet-dir", "/nonexistent"]) == 1
    assert "NVML is not available" in caplog.text


async def test_fake_process_registers_and_empties_on_sigterm(kubelet: FakeKubelet, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voltgrid.gpu_slicer.main",
        "--fake",
        "--fake-gpus",
        "3",
        "--profile",
        "half",
        "--kubelet-dir",
        str(kubelet.directory),
        "--mps-root",
        str(tmp_path / "mps"),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        request = await kubelet.registered()
        assert request.resource_name == "voltgrid.dev/gpu-1-2"
        async with kubelet.plugin(request.endpoint) as plugin:
            stream = plugin.ListAndWatch(pb.Empty())
            first = await stream.read()
            assert len(first.devices) == 6
            proc.send_signal(signal.SIGTERM)
            last = await stream.read()
            assert last is not grpc.aio.EOF, ((await proc.communicate())[1].decode(), proc.returncode)
            assert list(last.devices) == []
            assert await stream.read() is grpc.aio.EOF
        async with asyncio.timeout(EXIT_WAIT_S):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "registered voltgrid.dev/gpu-1-2" in err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
