"""``voltgrid gpu-slicer``: run the device plugin on this node until SIGTERM/SIGINT.

Exit codes: 0 after a clean stop, 1 when the node cannot be sliced (no NVML, no GPU), 2 for bad settings.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from voltgrid.gpu_slicer.errors import ConfigError, SlicerError
from voltgrid.gpu_slicer.fake import FakeHardware, FakeMps, fake_gpus
from voltgrid.gpu_slicer.hardware import Hardware, MpsControl
from voltgrid.gpu_slicer.mps import MpsDaemon
from voltgrid.gpu_slicer.nvml import NvmlHardware
from voltgrid.gpu_slicer.plugin import SlicerPlugin
from voltgrid.gpu_slicer.settings import Settings, load_settings
from voltgrid.gpu_slicer.slices import MpsPaths

log = logging.getLogger("voltgrid.gpu_slicer")


def _backends(settings: Settings) -> tuple[Hardware, MpsControl]:
    if settings.fake:
        return FakeHardware(fake_gpus(settings.fake_gpus)), FakeMps()
    return NvmlHardware(), MpsDaemon(MpsPaths(settings.mps_root), settings.mps_control)


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run the plugin until ``stop`` is set (by default: until SIGTERM or SIGINT)."""
    hardware, mps = _backends(settings)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if stop is None else ()
    stop = stop or asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await SlicerPlugin(settings, hardware, mps).run(stop)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        hardware.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``voltgrid gpu-slicer``; returns the exit code."""
    try:
        settings = load_settings(argv, os.environ)
    except ConfigError as e:
        print(f"voltgrid gpu-slicer: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except SlicerError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
