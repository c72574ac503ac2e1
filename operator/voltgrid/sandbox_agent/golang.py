"""Go: no REPL, so each execution is a program, built and run on its own; no state is kept.

Go has no interpreter to keep variables in, so a Go context is a private build directory and a build
cache: each execution's code is written to ``main.go`` there (``package main`` is added when the code
has no package clause), built with ``go build`` and the binary run in the context's cwd. Only what
the program leaves on disk carries over to the next execution. The build cache (``GOCACHE``, shared
by the sandbox's Go contexts unless the environment sets one) makes every build after the first
compile only the new code. ``CGO_ENABLED=0`` (no C compiler in the image) and ``GOTOOLCHAIN=local``
(never fetch a toolchain) unless the environment says otherwise.

Events as for the other languages: the program's output streams; a build failure is an ``error``
``CompileError`` (the compiler's messages as its traceback), a non-zero exit an ``error``
``ExitCode``. The timeout covers build and run; past it (or abandoned by its client) the process
group is killed. An interrupt is SIGINT to the running build or program.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Final

from voltgrid.sandbox_agent.commands import Commands
from voltgrid.sandbox_agent.errors import AgentError
from voltgrid.sandbox_agent.events import Event, end, timeout_error

_PACKAGE: Final = re.compile(r"^\s*package\s+\w+", re.MULTILINE)


class GoContext:
    """A Go context: each execution built with ``go build`` and run; no state between executions."""

    language = "go"

    def __init__(self, cwd: str, env: Mapping[str, str]) -> None:
        self.cwd = cwd
        self._env = dict(env)
        self._dir = ""
        self._go = ""
        self._commands = Commands()
        self.execution_count = 0

    async def start(self) -> None:
        go = shutil.which("go", path=self._env.get("PATH", os.defpath))
        if go is None:
            raise AgentError(501, "language_unavailable", "go needs 'go', which this sandbox's image lacks")
        self._go = go
        self._dir = tempfile.mkdtemp(prefix="voltgrid-go-")

    def _build_env(self) -> dict[str, str]:
        shared = Path(tempfile.gettempdir())
        defaults = {
            "GOCACHE": str(shared / "voltgrid-go-cache"),
            "GOPATH": str(shared / "voltgrid-go-path"),
            "CGO_ENABLED": "0",
            "GOTOOLCHAIN": "local",
        }
        return {**defaults, **self._env}

    async def execute(self, code: str, time_limit: float) -> AsyncGenerator[Event, None]:
        started = time.monotonic()
        self.execution_count += 1
        _write_source(os.path.join(self._dir, "main.go"), code)
        program = os.path.join(self._dir, "program")
        diagnostics: list[str] = []
        build = [self._go, "build", "-o", program, "main.go"]
        async for event in self._run(build, self._dir, self._build_env(), time_limit):
            if event["type"] in ("stdout", "stderr"):
                diagnostics.append(event["text"])
            elif event["type"] == "exit":
                if event["timed_out"]:
                    yield timeout_error(time_limit)
                    yield end("timeout", self.execution_count, started)
                    return
                if event["exit_code"] != 0:
                    lines = [line for line in "".join(diagnostics).splitlines() if not line.startswith("# ")]
                    yield {
                        "type": "error",
                        "name": "CompileError",
                        "value": lines[0] if lines else f"go build exited with {event['exit_code']}",
                        "traceback": lines,
                    }
                    yield end("error", self.execution_count, started)
                    return
        remaining = max(0.0, time_limit - (time.monotonic() - started))
        async for event in self._run([program], self.cwd, self._env, remaining):
            if event["type"] != "exit":
                yield event
            elif event["timed_out"]:
                yield timeout_error(time_limit)
                yield end("timeout", self.execution_count, started)
                return
            elif event["exit_code"] != 0:
                value = str(event["exit_code"]) if event["exit_code"] > 0 else event.get("signal", "")
                yield {"type": "error", "name": "ExitCode", "value": value, "traceback": []}
                yield end("error", self.execution_count, started)
                return
        yield end("ok", self.execution_count, started)

    async def _run(
        self, argv: list[str], cwd: str, env: Mapping[str, str], time_limit: float
    ) -> AsyncGenerator[Event, None]:
        """One process's events (``Commands``: own process group, killed at the limit), stdin empty."""
        async for event in self._commands.run(argv, cwd, env, time_limit):
            if event["type"] == "start":
                with contextlib.suppress(AgentError):  # stdin_closed: it exited already
                    await self._commands.get(event["id"]).write_stdin(_nothing(), close=True)
            else:
                yield event

    async def set_env(self, env: Mapping[str, str]) -> None:
        self._env.update(env)

    async def interrupt(self) -> None:
        for command in self._commands.describe():
            self._commands.get(command["id"]).signal("SIGINT")

    async def restart(self) -> None:
        """Nothing to reset but the count: no state outlives an execution."""
        self.execution_count = 0

    async def stop(self) -> None:
        for command in self._commands.describe():
            self._commands.get(command["id"]).signal("SIGKILL")
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""


def _write_source(path: str, code: str) -> None:
    Path(path).write_text(code if _PACKAGE.search(code) else "package main\n\n" + code)


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an (empty) async generator
