"""Execution contexts, one table of languages: a real Jupyter kernel for Python, a long-lived
interpreter for Bash, JavaScript, Ruby, PHP, R and Java (``repl.py``), a build per execution for Go
(``golang.py``).

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
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Final, Protocol

from jupyter_client.manager import AsyncKernelManager

from voltgrid.sandbox_agent.errors import AgentError
from voltgrid.sandbox_agent.events import INTERRUPT_GRACE, Event, end, timeout_error
from voltgrid.sandbox_agent.golang import GoContext
from voltgrid.sandbox_agent.repl import (
    BashContext,
    JavaContext,
    JavaScriptContext,
    PhpContext,
    RContext,
    RubyContext,
)

KERNEL_READY_TIMEOUT: Final = 60.0
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
                yield timeout_error(time_limit)
                yield end("timeout", self.execution_count, started)
                return
        finally:
            if not run.done():  # the client went away mid-execution: stop the code too
                run.cancel()
                await self._stop_runaway()
        content = reply["content"]
        self.execution_count = content.get("execution_count", self.execution_count)
        yield end("ok" if content["status"] == "ok" else "error", self.execution_count, started)

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


LANGUAGES: Final[dict[str, Callable[[str, Mapping[str, str]], Context]]] = {
    # language: context            state kept across executions          interpreter in the image
    "python": PythonContext,  #     yes, an ipykernel                     python3 + ipykernel
    "bash": BashContext,  #         yes, one bash                         bash
    "javascript": JavaScriptContext,  # yes, one node vm context          node
    "java": JavaContext,  #         yes, one jshell (jdk.jshell API)      a JDK's java + jshell
    "ruby": RubyContext,  #         yes, one binding, as irb              ruby
    "php": PhpContext,  #           yes, eval at one script's top level   php (CLI)
    "r": RContext,  #               yes, the global environment           R
    "go": GoContext,  #             no: each execution built and run      go
}


def new_context(language: str, cwd: str, env: Mapping[str, str]) -> Context:
    try:
        cls = LANGUAGES[language]
    except KeyError:
        raise AgentError(
            400, "unsupported_language", f"language {language!r} is not available; use one of {sorted(LANGUAGES)}"
        ) from None
    return cls(cwd, env)
