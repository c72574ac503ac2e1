"""Real message brokers for the trigger tests: private RabbitMQ and Redis servers on loopback.

Each broker runs from its Debian package (``e2e/cluster/install-deps.sh`` installs them) as a child
process with its state in a temporary directory and free ports, and is stopped by its PID. Nothing
touches a system service, a system port or root's Erlang cookie: RabbitMQ gets its own ``HOME``
and its own epmd (run in the foreground, so it is stopped like the broker). The rabbitmq-server
script stops its Erlang VM when it gets SIGTERM, so its PID is the one to signal.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ports import free_port

RABBITMQ_SERVER: Final = "/usr/lib/rabbitmq/bin/rabbitmq-server"
INSTALL_HINT: Final = "apt-get install -y rabbitmq-server redis-server (or e2e/cluster/install-deps.sh)"
START_TIMEOUT: Final = 90.0


@dataclass(frozen=True)
class Broker:
    url: str
    log: Path


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}; log: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"not listening on 127.0.0.1:{port} after {timeout}s; log: {log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child by PID (both servers shut down cleanly on it), SIGKILL after 30s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def rabbitmq_available() -> bool:
    return os.path.exists(RABBITMQ_SERVER) and shutil.which("epmd") is not None


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[Broker]:
    port = free_port()
    log = workdir / "redis.log"
    args = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir), "--save", ""]
    args += ["--appendonly", "no", "--logfile", str(log), "--daemonize", "no"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_port(port, proc, log)
        yield Broker(f"redis://127.0.0.1:{port}/0", log)
    finally:
        _stop(proc)


@contextlib.contextmanager
def rabbitmq_server(workdir: Path) -> Iterator[Broker]:
    port, dist, epmd_port = free_port(), free_port(), free_port()
    home = workdir / "home"
    home.mkdir()
    (workdir / "enabled_plugins").write_text("[].\n")
    log = workdir / "rabbitmq.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_NODENAME": f"voltgrid-test-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq"),
    }
    (workdir / "rabbitmq.conf").write_text("loopback_users.guest = true\n")
    epmd_log = workdir / "epmd.log"
    epmd_bin = shutil.which("epmd") or "epmd"
    with epmd_log.open("wb") as out:
        epmd = subprocess.Popen(
            [epmd_bin, "-address", "127.0.0.1", "-port", str(epmd_port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        _wait_port(epmd_port, epmd, epmd_log)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [RABBITMQ_SERVER], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            _wait_port(port, proc, log)
            yield Broker(f"amqp://guest:guest@127.0.0.1:{port}/", log)
        finally:
            _stop(proc)
    finally:
        _stop(epmd)
