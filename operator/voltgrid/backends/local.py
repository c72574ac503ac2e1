"""Local-process backend: each instance is a child process on a free loopback port.

For ``voltgrid dev``, fast tests and benchmarks. THIS IS NOT ISOLATED: instances run as the current
user with full access to this machine. Each instance gets ``PORT``, ``VOLTGRID_SESSION_ID``,
``VOLTGRID_INSTANCE_ID`` and ``VOLTGRID_STORAGE_DIR`` (``<storage root>/<namespace>/<function>/<session>``,
the same sub-path the storage webhook mounts for pods). What a pod label records in a cluster is
written here to a state file per instance (``<state root>/instances/<id>.json``) when it starts, so
that another gateway process on the same machine can LIST and reach it, as replicas do with pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Final

from voltgrid.api.function import Function
from voltgrid.backends.base import Instance, InstanceStartError, function_key

logger = logging.getLogger(__name__)

NOT_ISOLATED_WARNING: Final = (
    "WARNING: the local-process backend runs function instances as plain processes of this user. "
    "They are NOT ISOLATED: no sandbox, no resource limits, full access to this machine. "
    "Use it only for development and tests."
)
#: Seconds an instance may take to accept connections on its port.
DEFAULT_READY_TIMEOUT: Final = 30.0
#: Seconds between SIGTERM and SIGKILL when an instance is deleted.
DEFAULT_KILL_GRACE: Final = 3.0
READY_POLL_INTERVAL: Final = 0.02


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalProcessBackend:
    """Runs instances as local processes (see the module docstring: not isolated)."""

    def __init__(
        self,
        state_root: Path,
        storage_root: Path,
        *,
        host: str = "127.0.0.1",
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        kill_grace: float = DEFAULT_KILL_GRACE,
    ) -> None:
        self._instances_dir = state_root / "instances"
        self._logs_dir = state_root / "logs"
        self._instances_dir.mkdir(parents=True, exist_ok=True)
        self._logs_dir.mkdir(parents=True, exist_ok=True)
        self.storage_root = storage_root
        self._host = host
        self._ready_timeout = ready_timeout
        self._kill_grace = kill_grace
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    def storage_dir(self, function: str, session_id: str) -> Path:
        namespace, name = function.split("/", 1)
        return self.storage_root / namespace / name / session_id

    async def create(self, function: Function, session_id: str, *, warm: bool = False) -> Instance:
        spec = function.spec
        argv = [*(spec.command or []), *(spec.args or [])]
        if not argv:
            raise InstanceStartError(f"function {function_key(function)} has no command to run locally")
        key = function_key(function)
        instance_id = f"{function.metadata.name}-{secrets.token_hex(5)}"
        port = free_port(self._host)
        storage = self.storage_dir(key, session_id)
        storage.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            **{e.name: e.value for e in spec.env},
            "PORT": str(port),
            "VOLTGRID_SESSION_ID": session_id,
            "VOLTGRID_INSTANCE_ID": instance_id,
            "VOLTGRID_FUNCTION": key,
            "VOLTGRID_STORAGE_DIR": str(storage),
        }
        log = (self._logs_dir / f"{instance_id}.log").open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        except OSError as e:
            raise InstanceStartError(f"cannot run {argv[0]!r} for {key}: {e}") from e
        finally:
            log.close()
        self._procs[instance_id] = proc
        instance = Instance(
            id=instance_id,
            function=key,
            url=f"http://{self._host}:{port}",
            session=session_id,
            warm=warm,
            created=time.time(),
        )
        try:
            await self._wait_ready(proc, port)
        except BaseException:
            await self._kill(instance_id, proc.pid)
            raise
        state = {
            "id": instance_id,
            "function": key,
            "url": instance.url,
            "session": session_id,
            "warm": warm,
            "created": instance.created,
            "pid": proc.pid,
        }
        tmp = self._instances_dir / f".{instance_id}.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(self._instances_dir / f"{instance_id}.json")
        return instance

    async def _wait_ready(self, proc: asyncio.subprocess.Process, port: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout
        while loop.time() < deadline:
            if proc.returncode is not None:
                raise InstanceStartError(f"instance exited with code {proc.returncode} before it was ready")
            try:
                _, writer = await asyncio.open_connection(self._host, port)
            except OSError:
                await asyncio.sleep(READY_POLL_INTERVAL)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        raise InstanceStartError(f"instance not ready on port {port} after {self._ready_timeout}s")

    async def delete(self, instance: Instance) -> None:
        path = self._instances_dir / f"{instance.id}.json"
        pid: int | None = None
        proc = self._procs.get(instance.id)
        if proc is not None:
            pid = proc.pid
        else:
            with contextlib.suppress(OSError, ValueError, KeyError):
                pid = int(json.loads(path.read_text())["pid"])
        path.unlink(missing_ok=True)
        if pid is not None:
            await self._kill(instance.id, pid)

    async def _kill(self, instance_id: str, pid: int) -> None:
        proc = self._procs.get(instance_id)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), self._kill_grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                await proc.wait()
            # Forgotten only once reaped: a kill cancelled half-way is finished by stop_all().
            self._procs.pop(instance_id, None)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._kill_grace
        while _alive(pid) and loop.time() < deadline:  # noqa: ASYNC110 (a foreign pid has no waitable handle)
            await asyncio.sleep(READY_POLL_INTERVAL)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    async def list(self, function: str | None = None, session: str | None = None) -> list[Instance]:
        found = []
        for path in self._instances_dir.glob("*.json"):
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if (function and state["function"] != function) or (session and state["session"] != session):
                continue
            if not _alive(int(state["pid"])):
                path.unlink(missing_ok=True)
                continue
            found.append(
                Instance(
                    id=state["id"],
                    function=state["function"],
                    url=state["url"],
                    session=state["session"],
                    warm=state["warm"],
                    created=state["created"],
                )
            )
        return found

    async def checkpoint(self, instance: Instance, when: float) -> None:
        """Nothing to record: no operator watches local instances, and this backend's gateway
        manages their warm pools and idle release itself."""

    async def stop_all(self) -> None:
        """Kill every instance this backend object started (``voltgrid dev`` exit, test teardown)."""
        for instance_id, proc in list(self._procs.items()):
            (self._instances_dir / f"{instance_id}.json").unlink(missing_ok=True)
            await self._kill(instance_id, proc.pid)

    async def close(self) -> None:
        """Nothing to release: instances outlive the backend object, like pods outlive a gateway."""
