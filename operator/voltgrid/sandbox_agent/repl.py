"""Contexts driven through a long-lived interpreter's pipes: Bash, JavaScript (Node.js), Ruby, PHP,
R and Java (jshell).

Languages without a Jupyter kernel in the image keep their state in one interpreter process per
context. Each execution is handed to it, and once the code has run the interpreter prints a random
end marker on stdout (followed by what the execution returned: an exit status, a result) and on
stderr; everything before the markers is the execution's output, streamed as it comes. The marker
is random per execution, so code cannot fake the end of its own execution by printing it.

Ruby, PHP, R and Java run a small driver of their own language (``drivers/``, one file each): each
execution is written to a file in the context's private directory and named on the driver's stdin
(``run TOKEN PATH``); the driver evaluates it in one scope kept across executions and answers the
stdout marker with a JSON outcome, ``{"result"}`` (the last value as the language prints it),
``{"error": {"name", "value", "traceback"}}`` or ``{}`` — the same outcome the Node.js driver gives.
``env HEXKEY HEXVALUE`` lines set the environment of a running driver (Java restarts instead: a JVM
cannot change its own environment).

An interrupt is SIGINT to the interpreter's process group: it stops the running command (Bash, which
traps SIGINT to survive it), the running script (Node.js, run with ``breakOnSigint``) or the running
code (the drivers, which ignore a SIGINT between executions); repeated a few times if the execution
goes on, then the interpreter is killed (a ``ContextRestarted`` error: Node.js at times loses a
SIGINT for good, and an interrupt must stop the code). An execution past its timeout, or abandoned
by its client, is interrupted; an interpreter that does not settle within :data:`INTERRUPT_GRACE`
is restarted (its state is lost, and the next execution says so by
its execution count starting again at 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from voltgrid.sandbox_agent.errors import AgentError
from voltgrid.sandbox_agent.events import INTERRUPT_GRACE, Event, end, timeout_error

READ_CHUNK: Final = 65536
INTERRUPT_REPEATS: Final = 5
INTERRUPT_REPEAT_S: Final = 0.5
DRIVERS: Final = Path(__file__).parent / "drivers"


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
            stop = self.buffer.find(b"\n", at)
            out, self.buffer = self.buffer[:at], self.buffer[at:]
            if stop >= 0:
                self.found = True
                self.trailer = self.buffer[len(self.token) : stop - at]
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


class MarkerRepl(ABC):
    """One interpreter process per context, speaking the end-marker protocol (see the module)."""

    language = ""

    def __init__(self, cwd: str, env: Mapping[str, str]) -> None:
        self.cwd = cwd
        self._env = dict(env)
        self._proc: asyncio.subprocess.Process | None = None
        self._running: asyncio.Event | None = None
        """Set once the running execution's output ended (None while none runs)."""
        self.execution_count = 0

    @abstractmethod
    def _argv(self) -> list[str]:
        """The interpreter's command line."""

    @abstractmethod
    def _submit(self, code: str, token: str) -> None:
        """Hand ``code`` to the interpreter, which answers with the markers once it has run."""

    @abstractmethod
    def _finish(self, trailer: str) -> list[Event]:
        """The events the stdout marker's trailer stands for (before ``end``)."""

    @abstractmethod
    async def set_env(self, env: Mapping[str, str]) -> None:
        """Add ``env`` to the running interpreter's environment and to any restarted one."""

    @abstractmethod
    async def _after_start(self) -> None:
        """Set up the fresh interpreter (nothing runs in it yet)."""

    @abstractmethod
    def _cleanup(self) -> None:
        """Remove what :meth:`_after_start` made."""

    async def start(self) -> None:
        argv = self._argv()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=self.cwd,
                env=self._env,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise AgentError(
                501, "language_unavailable", f"{self.language} needs {argv[0]!r}, which this sandbox's image lacks"
            ) from None
        await self._after_start()

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
        self._submit(code, token)
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        out_marker, err_marker = EndMarker(token.encode()), EndMarker(token.encode())
        readers = [
            asyncio.ensure_future(_pump(self._proc.stdout, "stdout", out_marker, queue)),
            asyncio.ensure_future(_pump(self._proc.stderr, "stderr", err_marker, queue)),
        ]
        deadline = started + time_limit
        status = "ok"
        self._running = done = asyncio.Event()
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
            done.set()
            self._running = None
            for r in readers:
                r.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            if status == "timeout" or not (out_marker.found and err_marker.found):
                await self._recover(token)
        if status == "timeout":
            yield timeout_error(time_limit)
            yield end("timeout", self.execution_count, started)
            return
        if out_marker.found:
            events = self._finish(out_marker.trailer.decode(errors="replace"))
        else:
            events = [_restarted(self.language)]
        for event in events:
            yield event
        failed = any(e["type"] == "error" for e in events)
        yield end("error" if failed else "ok", self.execution_count, started)

    async def _recover(self, token: str) -> None:
        """After a timeout or an abandoned execution: interrupt (repeatedly) until the interpreter
        prints the markers; restart it when it does not (state lost, as the next execution shows)."""
        assert self._proc is not None and self._proc.stdout is not None and self._proc.stderr is not None
        marker = token.encode()
        try:
            for _ in range(INTERRUPT_REPEATS):
                self._signal(signal.SIGINT)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(INTERRUPT_REPEAT_S):
                        await self._proc.stdout.readuntil(marker)  # a timeout keeps the buffer unread
                    break
            else:
                await self.restart()
                return
            async with asyncio.timeout(INTERRUPT_GRACE):
                await self._proc.stdout.readline()
                await self._proc.stderr.readuntil(marker)
                await self._proc.stderr.readline()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await self.restart()

    async def interrupt(self) -> None:
        """SIGINT until the running execution ends: an interpreter may miss one (Node.js does, at
        times), so it is repeated a few times, and an interpreter still running is killed."""
        running = self._running
        for _ in range(INTERRUPT_REPEATS):
            self._signal(signal.SIGINT)
            if running is None:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(running.wait(), INTERRUPT_REPEAT_S)
                return
        # Deaf to SIGINT (Node.js can lose one for good): the interpreter goes, the context restarts.
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # exited, not reaped yet
                os.killpg(self._proc.pid, sig)

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
        self._cleanup()


class CellRepl(MarkerRepl):
    """An interpreter that reads each execution from a file in the context's private directory."""

    def __init__(self, cwd: str, env: Mapping[str, str]) -> None:
        super().__init__(cwd, env)
        self._cells = ""

    async def _after_start(self) -> None:
        assert self._proc is not None
        self._cells = os.path.join("/tmp", f"voltgrid-{self.language}-{self._proc.pid}-{secrets.token_hex(4)}")
        os.mkdir(self._cells, 0o700)

    def _cleanup(self) -> None:
        if self._cells:
            shutil.rmtree(self._cells, ignore_errors=True)
            self._cells = ""

    def _cell(self, code: str, suffix: str) -> str:
        """The execution's code in a new file of the private directory; its path."""
        cell = os.path.join(self._cells, f"cell-{self.execution_count}{suffix}")
        Path(cell).write_text(code if code.endswith("\n") else code + "\n")
        return cell


class BashContext(CellRepl):
    """A Bash context: one long-lived ``bash`` whose variables, functions and cwd persist.

    Each execution writes the code to a file and ``source``s it with stdin from ``/dev/null`` (the
    shell's own stdin carries the commands); the stdout marker carries the exit status, and a
    non-zero one is an ``error`` event named ``ExitCode``. ``trap : INT`` keeps the shell alive when
    an interrupt stops the running command.
    """

    language = "bash"

    def _argv(self) -> list[str]:
        return ["bash", "--noprofile", "--norc"]

    async def _after_start(self) -> None:
        await super()._after_start()
        self._send("trap : INT\n")

    def _submit(self, code: str, token: str) -> None:
        cell = self._cell(code, ".sh")
        self._send(f". {cell} </dev/null; printf '{token}%d\\n' $?; printf '{token}\\n' >&2\n")

    def _finish(self, trailer: str) -> list[Event]:
        exit_code = int(trailer) if trailer.isdigit() else 1
        if exit_code == 0:
            return []
        return [{"type": "error", "name": "ExitCode", "value": str(exit_code), "traceback": []}]

    async def set_env(self, env: Mapping[str, str]) -> None:
        """Exported in the running shell (idle: nothing runs before a claim) and any restarted one."""
        self._env.update(env)
        self._send("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))


#: The Node.js side of the protocol: one JSON line per execution on stdin, run as a script in one
#: persistent vm context (top-level ``var``/``let``/``const`` and functions persist, as across a
#: page's scripts); a returned promise is awaited; the stdout marker carries ``{"result"}`` (the
#: value, ``util.inspect``-ed) or ``{"error"}``. ``breakOnSigint`` makes an interrupt stop the script.
NODE_DRIVER: Final = r"""
const vm = require('vm'), util = require('util'), readline = require('readline');
const context = vm.createContext({
  console, require, process, Buffer, URL, TextEncoder, TextDecoder,
  setTimeout, setInterval, clearTimeout, clearInterval, setImmediate, queueMicrotask,
});
process.on('SIGINT', () => {});
let queue = Promise.resolve();
readline.createInterface({input: process.stdin, terminal: false}).on('line', (line) => {
  queue = queue.then(() => run(JSON.parse(line)));
});
async function run(cell) {
  if (cell.env) { Object.assign(process.env, cell.env); return; }
  let outcome;
  try {
    let value = vm.runInContext(cell.code, context, {filename: 'cell', breakOnSigint: true});
    if (value && typeof value.then === 'function') value = await value;
    outcome = value === undefined ? {} : {result: util.inspect(value)};
  } catch (e) {
    // Errors of the vm context come from its own realm: not instanceof this realm's Error.
    const err = e !== null && typeof e === 'object' && 'message' in e ? e : new Error(String(e));
    outcome = {error: {name: err.name, value: err.message, traceback: String(err.stack || '').split('\n')}};
  }
  process.stdout.write(cell.token + JSON.stringify(outcome) + '\n');
  process.stderr.write(cell.token + '\n');
}
"""


class JavaScriptContext(MarkerRepl):
    """A JavaScript context: one ``node`` process evaluating each execution in one vm context."""

    language = "javascript"

    def _argv(self) -> list[str]:
        return ["node", "-e", NODE_DRIVER]

    async def _after_start(self) -> None:
        """The driver sets itself up; nothing is written outside the process."""

    def _cleanup(self) -> None:
        """Nothing to remove: the driver wrote no file."""

    def _submit(self, code: str, token: str) -> None:
        self._send(json.dumps({"code": code, "token": token}) + "\n")

    def _finish(self, trailer: str) -> list[Event]:
        return _outcome(trailer, self.language)

    async def set_env(self, env: Mapping[str, str]) -> None:
        """Into ``process.env`` of the running interpreter (idle before a claim) and any restarted one."""
        self._env.update(env)
        self._send(json.dumps({"env": dict(env)}) + "\n")


class DriverRepl(CellRepl):
    """An interpreter running one of ``drivers/`` (see the module): Ruby, PHP, R, Java."""

    driver = ""
    """The driver's file name in ``drivers/``."""

    @abstractmethod
    def _interpreter(self) -> list[str]:
        """The command line that runs a source file, without the file."""

    def _argv(self) -> list[str]:
        return [*self._interpreter(), str(DRIVERS / self.driver)]

    def _submit(self, code: str, token: str) -> None:
        self._send(f"run {token} {self._cell(code, '.cell')}\n")

    def _finish(self, trailer: str) -> list[Event]:
        return _outcome(trailer, self.language)

    async def set_env(self, env: Mapping[str, str]) -> None:
        """Into the running driver's environment (idle before a claim) and any restarted one."""
        self._env.update(env)
        self._send("".join(f"env {k.encode().hex()} {v.encode().hex()}\n" for k, v in env.items()))


class RubyContext(DriverRepl):
    """Ruby: one ``ruby`` evaluating each execution in one top-level binding, as irb does."""

    language = "ruby"
    driver = "driver.rb"

    def _interpreter(self) -> list[str]:
        return ["ruby"]


class PhpContext(DriverRepl):
    """PHP: one ``php`` (CLI) ``eval``-ing each execution at its top level (globals persist)."""

    language = "php"
    driver = "driver.php"

    def _interpreter(self) -> list[str]:
        return ["php"]


class RContext(DriverRepl):
    """R: one ``R`` evaluating each execution in its global environment, as the console does."""

    language = "r"
    driver = "driver.R"

    def _interpreter(self) -> list[str]:
        return ["R", "--vanilla", "--quiet", "--no-echo", "-f"]


class JavaContext(DriverRepl):
    """Java: one JVM holding one jshell (the JDK's ``jdk.jshell`` API, snippets run in that JVM).

    The driver runs with the ``java`` next to ``jshell`` (a JDK's; a JRE lacks the jshell and compiler
    modules). The serial collector keeps a small sandbox's JVM small.
    """

    language = "java"
    driver = "Driver.java"

    def _interpreter(self) -> list[str]:
        jshell = shutil.which("jshell", path=self._env.get("PATH", os.defpath))
        if jshell is None:
            raise AgentError(
                501, "language_unavailable", "java needs 'jshell' (a JDK), which this sandbox's image lacks"
            )
        return [str(Path(jshell).resolve().parent / "java"), "-XX:+UseSerialGC"]

    async def set_env(self, env: Mapping[str, str]) -> None:
        """A JVM cannot change its own environment: the context restarts with ``env`` (before a
        claim, nothing ran in it yet)."""
        self._env.update(env)
        if self._proc is not None:
            await self.restart()


def _outcome(trailer: str, language: str) -> list[Event]:
    """The events of a driver's JSON outcome (Node.js and ``drivers/``)."""
    try:
        outcome = json.loads(trailer)
    except ValueError:
        return [_restarted(language)]
    if "error" in outcome:
        return [{"type": "error", **outcome["error"]}]
    if "result" in outcome:
        return [{"type": "result", "data": {"text/plain": outcome["result"]}, "is_main_result": True}]
    return []


def _restarted(language: str) -> Event:
    return {
        "type": "error",
        "name": "ContextRestarted",
        "value": f"the {language} interpreter ended before the execution did; its context restarts, state lost",
        "traceback": [],
    }


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
