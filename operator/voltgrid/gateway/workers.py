"""Several gateway workers per pod: a small supervisor starts them and keeps them running.

The supervisor runs the same ``voltgrid gateway`` command ``workers`` times, each child told its
index in :data:`WORKER_ENV`. Every worker listens on the public port with SO_REUSEPORT (the kernel
spreads new connections over them) and on its own member port, and is one member of the ownership
ring (see ``workers`` in :mod:`voltgrid.gateway.settings`): workers of one pod relate to each other
exactly as replicas do, so every guarantee between replicas holds between workers. The supervisor
passes SIGTERM and SIGINT on, and restarts a worker that exits on its own after
:data:`RESTART_DELAY` seconds (as gunicorn's arbiter does); it never serves requests itself.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Final

logger = logging.getLogger(__name__)

WORKER_ENV: Final = "VOLTGRID_GATEWAY_WORKER_INDEX"
#: Seconds before a worker that exited on its own is started again.
RESTART_DELAY: Final = 1.0
#: Seconds the workers get to stop after the supervisor was told to stop; then they are killed.
STOP_TIMEOUT: Final = 10.0
POLL: Final = 0.2


class Supervisor:
    """Starts ``count`` workers running ``command`` and keeps them running until told to stop."""

    def __init__(self, command: Sequence[str], count: int, env: Mapping[str, str] | None = None) -> None:
        self.command = list(command)
        self.count = count
        #: Added to each worker's environment (the internal token the workers must share).
        self.env = dict(env or {})
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False

    def start(self, index: int) -> None:
        env = {**os.environ, **self.env, WORKER_ENV: str(index)}
        self.workers[index] = subprocess.Popen(self.command, env=env)
        logger.info("gateway worker %d started (pid %d)", index, self.workers[index].pid)

    def stop(self, signum: int, _frame: FrameType | None = None) -> None:
        self.stopping = True
        for worker in self.workers.values():
            if worker.poll() is None:
                worker.send_signal(signum)

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; then wait for the workers (killing them after
        :data:`STOP_TIMEOUT`). Returns the exit status for the command."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for index in range(self.count):
            self.start(index)
        exited: dict[int, float] = {}
        while not self.stopping:
            now = time.monotonic()
            for index, worker in self.workers.items():
                if index not in exited and worker.poll() is not None:
                    logger.warning("gateway worker %d exited with %s: restarting it", index, worker.returncode)
                    exited[index] = now
            for index, since in list(exited.items()):
                if now - since >= RESTART_DELAY and not self.stopping:
                    del exited[index]
                    self.start(index)
            time.sleep(POLL)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.workers.values():
            try:
                worker.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        return 0
