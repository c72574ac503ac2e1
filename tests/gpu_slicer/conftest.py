"""Fixtures for the gRPC tests: a fake kubelet and a plugin running against it.

Sockets live in a short temporary directory: unix socket paths are limited to 107 bytes, which pytest's
``tmp_path`` can exceed.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from slicer_harness import FAST, FakeKubelet, Running

from voltgrid.gpu_slicer.fake import FakeHardware, FakeMps, fake_gpus
from voltgrid.gpu_slicer.plugin import SlicerPlugin
from voltgrid.gpu_slicer.settings import Settings


@pytest.fixture
def sockets() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vg-"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
async def kubelet(sockets: Path) -> AsyncIterator[FakeKubelet]:
    kubelet = FakeKubelet(sockets)
    await kubelet.start()
    yield kubelet
    await kubelet.stop()


@pytest.fixture
def hardware() -> FakeHardware:
    return FakeHardware(fake_gpus(2))


@pytest.fixture
def mps() -> FakeMps:
    return FakeMps()


@pytest.fixture
async def running(
    sockets: Path, kubelet: FakeKubelet, hardware: FakeHardware, mps: FakeMps, tmp_path: Path
) -> AsyncIterator[Running]:
    settings = Settings(kubelet_dir=sockets, profile="quarter", mps_root=tmp_path / "mps")
    plugin = SlicerPlugin(settings, hardware, mps, **FAST)
    stop = asyncio.Event()
    run = Running(plugin, hardware, mps, stop, asyncio.create_task(plugin.run(stop)))
    yield run
    if not run.task.done():
        await run.shutdown()
