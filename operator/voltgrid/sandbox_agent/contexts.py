"""Stateful execution contexts: a real Jupyter kernel for Python, a persistent shell for Bash.

A context keeps its state (variables, imports, working directory) between executions, which is what
an agent's "run this, then use the result" loop needs. Each execution yields events that the HTTP
layer writes as NDJSON lines, one per event, as they happen:

- ``{"type": "stdout"|"stderr", "text"}`` — output as it is printed;
- ``{"type": "result", "data": {mime: value}, "is_main_result"}`` — an ``execute_result`` (the
  value of the last expression) or a ``display_data`` (a matplotlib figure's ``image/png``);
- ``{"type": "error", "name", "value", "traceback"}``;
- ``{"type": "end", "status": "ok"|"error"|"timeout", "execution_count", "duration_ms"}`` — always last.

Python runs through ``jupyter_client``'s ``AsyncKernelManager`` and ``execute_interactive`` with an
output hook: the kernel's iopub messages (``stream``, ``execute_result``, ``display_data``,
``error``) map one to one onto the events, so rich output works exactly as in a notebook.

One execution runs at a time per context; a second one waits for the first (bounded by its own
timeout). A timed-out execution is interrupted (SIGINT to the kernel / the shell's children) so the
context stays usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from jupyter_client.manager import AsyncKernelManager

from voltgrid.sandbox_agent.errors import AgentError

Event = dict[str, Any]
KERNEL_READY_TIMEOUT: Final = 60.0
INTERRUPT_GRACE: Final = 5.0
"""How long an interrupted execution may take to stop before its context is restarted."""
READ_CHUNK: Final = 65536
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Context(Protocol):
    language: str
    cwd: str
    execution_count: int

    async def start(self) -> None: ...
    def execute(self, code: str, time_limit: float) -> AsyncGenerator[Event, None]: ...
    async def set_env(self, env: Mapping[str, str]) -> None: ...
    async def interrupt(self) -> None: ...
    async def restart(self) -> None: ...
    async def stop(self) -> None: ...


def _end(status: str, count: int, started: float) -> Event:
    return {
        "type": "end",
        "status": status,
        "execution_count": count,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
    }


def _timeout_error(timeout: float) -> Event:
    return {
        "type": "error",
        "name": "TimeoutError",
        "value": f"execution exceeded its timeout of {timeout:g} s and was interrupted",
        "traceback": [],
    }


class PythonContext:
    """A Python context: one ipykernel process driven through jupyter_client."""

    language = "python"

    def __init__(self, cwd: str, env: Mapping[str, str]) -> None:
        self.cwd = cwd
        self._env = dict(env)
        # IPC sockets, not TCP: the kernel listens on no port the sandbox's network could reach.
        self._ipc = tempfile.mkdtemp(prefix="voltgrid-kernel-")
        self._km = AsyncKernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(self._ipc, "k"))
        self._client: Any = None
        self.execution_count = 0

    async def start(self) -> None:
        await self._km.start_kernel(cwd=self.cwd, env=self._env)
        self._client = self._km.client()
        self._client.start_channels()
        await self._client.wait_for_ready(timeout=KERNEL_READY_TIMEOUT)

    async def execute(self, code: str, time_limit: float) -> AsyncGenerator[Event, None]:
        started = time.monotonic()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def hook(msg: dict[str, Any]) -> None:
            event = _from_iopub(msg)
            if event is not None:
                queue.put_nowait(event)

        run = asyncio.ensure_future(
            self._client.execute_interactive(code, timeout=time_limit, output_hook=hook, allow_stdin=False)
        )
        try:
            while not (run.done() and queue.empty()):
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, run}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            try:
                reply = run.result()
            except TimeoutError:
                await self._stop_runaway()
                yield _timeout_error(time_limit)
                yield _end("timeout", self.execution_count, started)
                return
        finally:
            if not run.done():  # the client went away mid-execution: stop the code too
                run.cancel()
                await self._stop_runaway()
        content = reply["content"]
        self.execution_count = content.get("execution_count", self.execution_count)
        yield _end("ok" if content["status"] == "ok" else "error", self.execution_count, started)

    async def set_env(self, env: Mapping[str, str]) -> None:
        """Into the running kernel (silently: no output, no execution count) and any restarted one."""
        self._env.update(env)
        code = f"import os as _vg_os\n_vg_os.environ.update({dict(env)!r})\ndel _vg_os"
        await self._client.execute_interactive(
            code, silent=True, store_history=False, timeout=KERNEL_READY_TIMEOUT, output_hook=lambda _m: None
        )

    async def _stop_runaway(self) -> None:
        """Interrupt code that outlived its execution; restart the kernel if it ignores SIGINT."""
        await self._km.interrupt_kernel()
        try:
            await self._client.execute_interactive("", timeout=INTERRUPT_GRACE, output_hook=lambda _m: None)
        except TimeoutError:
            await self.restart()

    async def interrupt(self) -> None:
        await self._km.interrupt_kernel()

    async def restart(self) -> None:
        await self._km.restart_kernel(now=True)
        await self._client.wait_for_ready(timeout=KERNEL_READY_TIMEOUT)
        self.execution_count = 0

    async def stop(self) -> None:
        if self._client is not None:
            self._client.stop_channels()
        await self._km.shutdown_kernel(now=True)
        shutil.rmtree(self._ipc, ignore_errors=True)


def _from_iopub(msg: dict[str, Any]) -> Event | None:
    """The event of one iopub message of our execution; ``None`` for those a caller does not see."""
    kind = msg["header"]["msg_type"]
    content = msg["content"]
    if kind == "stream":
        return {"type": content["name"], "text": content["text"]}
    if kind == "execute_result":
        return {"type": "result", "data": content["data"], "is_main_result": True}
    if kind in ("display_data", "update_display_data"):
        return {"type": "result", "data": content["data"], "is_main_result": False}
    if kind == "error":
        return {
            "type": "error",
            "name": content["ename"],
            "value": content["evalue"],
            "traceback": [_ANSI.sub("", line) for line in content["traceback"]],
        }
    return None


@dataclass
class EndMarker:
    """Finds the end-of-execution marker in a byte stream that may split it across reads."""

    token: bytes
    buffer: bytes = b""
    found: bool = False
    trailer: bytes = field(default=b"")

    def feed(self, data: bytes) -> bytes:
        """The bytes before the marker that are safe to emit now; the marker's line ends the stream."""
        self.buffer += data
        at = self.buffer.find(self.token)
        if at >= 0:
            end = self.buffer.find(b"\n", at)
            out, self.buffer = self.buffer[:at], self.buffer[at:]
            if end >= 0:
                self.found = True
                self.trailer = self.buffer[len(self.token) : end - at]
            return out
        # Hold back only a tail that could be the marker's start, so output is never delayed otherwise.
        keep = next(
            (
                k
                for k in range(min(len(self.token) - 1, len(self.buffer)), 0, -1)
                if self.buffer.endswith(self.token[:k])
            ),
            0,
        )
        out, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep :]
        return out


class BashContext:
    """A Bash context: one long-lived ``bash`` whose variables, functions and cwd persist.

    Each execution writes the code to a file and ``source``s it with stdin from ``/dev/null`` (the
    shell's own stdin carries the commands), then prints a random marker with the exit status on
    stdout and stderr; output up to the markers is the execution's. ``trap : INT`` keeps the shell
    alive when an interrupt (SIGINT to its process group) stops the running command.
    """

    language = "bash"

    def __init__(self, cwd: str, env: Mapping[str, str]) -> None:
        self.cwd = cwd
        self._env = dict(env)
        self._proc: asyncio.subprocess.Process | None = None
        self._cells = ""
        self.execution_count = 0

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            "bash",
            "--noprofile",
            "--norc",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env=self._env,
            start_new_session=True,
        )
        self._cells = os.path.join("/tmp", f"voltgrid-bash-{self._proc.pid}-{secrets.token_hex(4)}")
        os.mkdir(self._cells, 0o700)
        self._send("trap : INT\n")

    def _send(self, text: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(text.encode())

    async def execute(self, code: str, time_limit: float) -> AsyncGenerator[Event, None]:
        started = time.monotonic()
        if self._proc is None or self._proc.returncode is not None:
            await self.restart()
        assert self._proc is not None and self._proc.stdout is not None and self._proc.stderr is not None
        self.execution_count += 1
        token = f"__VOLTGRID_END_{secrets.token_hex(8)}__"
        cell = os.path.join(self._cells, f"cell-{self.execution_count}.sh")
        _write_cell(cell, code)
        self._send(f". {cell} </dev/null; printf '{token}%d\\n' $?; printf '{token}\\n' >&2\n")
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        out_marker, err_marker = EndMarker(token.encode()), EndMarker(token.encode())
        readers = [
            asyncio.ensure_future(_pump(self._proc.stdout, "stdout", out_marker, queue)),
            asyncio.ensure_future(_pump(self._proc.stderr, "stderr", err_marker, queue)),
        ]
        deadline = started + time_limit
        status = "ok"
        try:
            finished = 0
            while finished < len(readers):
                try:
                    event = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    status = "timeout"
                    break
                if event is None:
                    finished += 1
                else:
                    yield event
        finally:
            for r in readers:
                r.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            if status == "timeout" or not (out_marker.found and err_marker.found):
                await self._recover(token)
        if status == "timeout":
            yield _timeout_error(time_limit)
            yield _end("timeout", self.execution_count, started)
            return
        trailer = out_marker.trailer.decode(errors="replace")
        exit_code = int(trailer) if trailer.isdigit() else 1
        if exit_code != 0:
            yield {"type": "error", "name": "ExitCode", "value": str(exit_code), "traceback": []}
        yield _end("ok" if exit_code == 0 else "error", self.execution_count, started)

    async def set_env(self, env: Mapping[str, str]) -> None:
        """Exported in the running shell (idle: nothing runs before a claim) and any restarted one."""
        self._env.update(env)
        self._send("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))

    async def _recover(self, token: str) -> None:
        """After a timeout or an abandoned execution: interrupt; restart the shell if it does not settle."""
        await self.interrupt()
        assert self._proc is not None and self._proc.stdout is not None and self._proc.stderr is not None
        try:
            async with asyncio.timeout(INTERRUPT_GRACE):
                for stream in (self._proc.stdout, self._proc.stderr):
                    await stream.readuntil(token.encode())
                    await stream.readline()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await self.restart()

    async def interrupt(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited, not reaped yet
                os.killpg(self._proc.pid, signal.SIGINT)

    async def restart(self) -> None:
        await self.stop()
        await self.start()
        self.execution_count = 0

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):  # exited, not reaped yet
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        if self._cells:
            for name in os.listdir(self._cells):
                os.unlink(os.path.join(self._cells, name))
            os.rmdir(self._cells)
            self._cells = ""


def _write_cell(path: str, code: str) -> None:
    """A cell is a few kilobytes in /tmp: written inline, not worth a thread."""
    Path(path).write_text(code if code.endswith("\n") else code + "\n")


async def _pump(stream: asyncio.StreamReader, name: str, marker: EndMarker, queue: asyncio.Queue[Event | None]) -> None:
    """Forward one pipe's output as events until the marker; ``None`` once done."""
    try:
        while not marker.found:
            data = await stream.read(READ_CHUNK)
            if not data:
                break
            text = marker.feed(data)
            if text:
                queue.put_nowait({"type": name, "text": text.decode(errors="replace")})
    finally:
        queue.put_nowait(None)


LANGUAGES: Final[dict[str, type[PythonContext] | type[BashContext]]] = {"python": PythonContext, "bash": BashContext}


def new_context(language: str, cwd: str, env: Mapping[str, str]) -> Context:
    try:
        cls = LANGUAGES[language]
    except KeyError:
        raise AgentError(
            400, "unsupported_language", f"language {language!r} is not available; use one of {sorted(LANGUAGES)}"
        ) from None
    return cls(cwd, env)
