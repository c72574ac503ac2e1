"""Commands: processes started in the sandbox, their output streamed, their stdin and signals driven.

``POST /commands`` starts one and streams NDJSON events while it runs: ``start`` (id, pid), then
``stdout``/``stderr`` text as it comes, then ``exit`` (``exit_code``, and ``signal`` when a signal
ended it, ``timed_out`` when the agent killed it at its timeout). Other requests feed its stdin
(``POST /commands/{id}/stdin``, raw bytes, ``?close=true`` to send EOF) or signal it
(``POST /commands/{id}/signal``). A command lives in its own process group, so a signal or the
timeout reaches the children it forked too; when the client that started it goes away, the group
is killed — nothing outlives its stream unseen.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import secrets
import signal
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from voltgrid.sandbox_agent.errors import AgentError, bad_request, not_found

READ_CHUNK: Final = 65536
KILL_GRACE: Final = 2.0
SIGNALS: Final = frozenset(
    {"SIGINT", "SIGTERM", "SIGKILL", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGSTOP", "SIGCONT"}
)

Event = dict[str, Any]


@dataclass
class Command:
    id: str
    argv: list[str]
    proc: asyncio.subprocess.Process
    timed_out: bool = False
    stdin_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "pid": self.proc.pid, "argv": self.argv, "running": self.proc.returncode is None}

    def signal(self, name: str) -> None:
        if name not in SIGNALS:
            raise bad_request(f"signal {name!r} is not one of {sorted(SIGNALS)}")
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, getattr(signal, name))

    async def write_stdin(self, chunks: AsyncIterator[bytes], close: bool) -> int:
        stdin = self.proc.stdin
        assert stdin is not None
        written = 0
        async with self.stdin_lock:
            if stdin.is_closing():
                raise AgentError(409, "stdin_closed", f"the stdin of command {self.id} is closed")
            try:
                async for chunk in chunks:
                    stdin.write(chunk)
                    await stdin.drain()
                    written += len(chunk)
                if close:
                    stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                raise AgentError(409, "stdin_closed", f"command {self.id} no longer reads its stdin") from None
        return written


class Commands:
    """The commands running in this sandbox, by id."""

    def __init__(self) -> None:
        self._running: dict[str, Command] = {}

    def get(self, command_id: str) -> Command:
        try:
            return self._running[command_id]
        except KeyError:
            raise not_found(f"no running command {command_id!r}") from None

    def describe(self) -> list[dict[str, Any]]:
        return [c.describe() for c in self._running.values()]

    async def run(
        self, argv: list[str], cwd: str, env: Mapping[str, str], time_limit: float
    ) -> AsyncGenerator[Event, None]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=dict(env),
                start_new_session=True,
            )
        except FileNotFoundError:
            raise AgentError(400, "command_not_found", f"{argv[0]!r} was not found") from None
        except PermissionError:
            raise AgentError(400, "command_not_executable", f"{argv[0]!r} is not executable") from None
        cmd = Command(id=secrets.token_hex(8), argv=argv, proc=proc)
        self._running[cmd.id] = cmd
        try:
            yield {"type": "start", "id": cmd.id, "pid": proc.pid}
            async for event in self._stream(cmd, time_limit):
                yield event
        finally:
            del self._running[cmd.id]
            if proc.returncode is None:  # abandoned by its client: the whole group goes
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()

    async def _stream(self, cmd: Command, time_limit: float) -> AsyncGenerator[Event, None]:
        proc = cmd.proc
        assert proc.stdout is not None and proc.stderr is not None
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        pumps = [
            asyncio.ensure_future(_pump(proc.stdout, "stdout", queue)),
            asyncio.ensure_future(_pump(proc.stderr, "stderr", queue)),
        ]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + time_limit
        try:
            open_pipes = len(pumps)
            while open_pipes:
                try:
                    event = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    cmd.timed_out = True
                    cmd.signal("SIGKILL")
                    break
                if event is None:
                    open_pipes -= 1
                else:
                    yield event
            # The pipes close when the last process holding them exits; the leader may be gone earlier.
            try:
                code = await asyncio.wait_for(proc.wait(), max(KILL_GRACE, deadline - loop.time()))
            except TimeoutError:
                cmd.timed_out = True
                cmd.signal("SIGKILL")
                code = await proc.wait()
        finally:
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        exit_event: Event = {"type": "exit", "exit_code": code, "timed_out": cmd.timed_out}
        if code < 0:
            exit_event["signal"] = signal.Signals(-code).name
        yield exit_event


async def _pump(stream: asyncio.StreamReader, name: str, queue: asyncio.Queue[Event | None]) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        while data := await stream.read(READ_CHUNK):
            if text := decoder.decode(data):
                queue.put_nowait({"type": name, "text": text})
        if tail := decoder.decode(b"", final=True):
            queue.put_nowait({"type": name, "text": tail})
    finally:
        queue.put_nowait(None)
