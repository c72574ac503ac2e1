"""Java, Ruby, PHP, R and Go against the host's real interpreters and compiler, over real HTTP.

For each language: state kept across executions where the language keeps it (Go: each execution
is a program of its own), the last value as the ``result``, an error as an ``error`` event with the
language's name for it, a timeout that interrupts the code (the context keeps its state), a
crashed interpreter that restarts, and ``501`` when the image lacks the interpreter. A language whose
interpreter is missing is skipped here, and fails under CI (``.ci/run`` installs them all with
e2e/cluster/install-deps.sh).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from conftest import Agent, StartAgent, needs, signed_claim, text_of, warm_settings


@dataclass(frozen=True)
class Lang:
    name: str
    binary: str
    define: str
    """Sets state (x = 41, a function inc) and prints ``set``."""
    use: str
    """The last value is inc(x), printed by the language as ``result``."""
    result: str
    fail: str
    error_name: str
    busy: str
    """Prints ``go``, then runs for a minute unless interrupted."""
    crash: str
    """Ends the interpreter."""


LANGS = [
    Lang(
        "java", "jshell",
        'int x = 41;\nint inc(int n) { return n + 1; }\nSystem.out.println("set");',
        'System.err.println("to stderr");\ninc(x)', "42",
        'Integer.parseInt("zz")', "java.lang.NumberFormatException",
        'System.out.println("go");\n'
        "long t = System.currentTimeMillis();\nwhile (System.currentTimeMillis() - t < 60000) {}",
        "System.exit(3);",
    ),
    Lang(
        "ruby", "ruby",
        'x = 41\ndef inc(n) = n + 1\nputs "set"',
        'warn "to stderr"\ninc(x)', "42",
        'raise ArgumentError, "bad"', "ArgumentError",
        'puts "go"\nloop { }',
        "exit!(3)",
    ),
    Lang(
        "php", "php",
        '$x = 41;\nfunction inc($n) { return $n + 1; }\necho "set\\n";',
        'fwrite(STDERR, "to stderr\\n");\necho inc($x);', "",
        'throw new InvalidArgumentException("bad");', "InvalidArgumentException",
        'echo "go\n";\nwhile (true) {}',
        "exit(3);",
    ),
    Lang(
        "r", "R",
        'x <- 41\ninc <- function(n) n + 1\ncat("set\\n")',
        'message("to stderr")\ninc(x)', "[1] 42",
        'stop("bad")', "simpleError",
        'cat("go\n")\nrepeat {}',
        "quit(status = 3)",
    ),
]  # fmt: skip


def lang_params() -> list[object]:
    return [pytest.param(lang, id=lang.name, marks=needs(lang.binary)) for lang in LANGS]


async def run(agent: Agent, lang: Lang, code: str, **body: object) -> list[dict[str, object]]:
    return await agent.events("/execute", {"language": lang.name, "code": code, **body})


@pytest.mark.parametrize("lang", lang_params())
async def test_state_persists_and_the_last_value_is_the_result(agent: Agent, lang: Lang) -> None:
    first = await run(agent, lang, lang.define)
    assert text_of(first) == "set\n" and first[-1]["status"] == "ok", first
    events = await run(agent, lang, lang.use)
    assert text_of(events, "stderr") == "to stderr\n", events
    if lang.result:
        [result] = [e for e in events if e["type"] == "result"]
        assert result == {"type": "result", "data": {"text/plain": lang.result}, "is_main_result": True}
    else:  # PHP has no value of a last expression: its code echoes
        assert text_of(events) == "42" and not [e for e in events if e["type"] == "result"]
    assert events[-1]["status"] == "ok" and events[-1]["execution_count"] == 2


@pytest.mark.parametrize("lang", lang_params())
async def test_errors_have_the_languages_name_and_the_context_survives(agent: Agent, lang: Lang) -> None:
    await run(agent, lang, lang.define)
    events = await run(agent, lang, lang.fail)
    [error] = [e for e in events if e["type"] == "error"]
    assert error["name"] == lang.error_name and isinstance(error["traceback"], list), error
    assert events[-1]["status"] == "error"
    after = await run(agent, lang, lang.use)
    assert after[-1]["status"] == "ok" and "42" in json.dumps(after), after


@pytest.mark.parametrize("lang", lang_params())
async def test_a_timeout_interrupts_the_code_and_state_survives(agent: Agent, lang: Lang) -> None:
    await run(agent, lang, lang.define)
    events = await run(agent, lang, lang.busy, timeout=2)
    assert events[-1]["status"] == "timeout" and events[-2]["name"] == "TimeoutError", events
    after = await run(agent, lang, lang.use)
    assert after[-1]["status"] == "ok" and after[-1]["execution_count"] == 3, after  # not restarted


@pytest.mark.parametrize("lang", lang_params())
async def test_an_interrupt_stops_the_running_code(agent: Agent, lang: Lang) -> None:
    ctx = (await agent.client.post("/contexts", json={"language": lang.name})).json()["id"]
    await run(agent, lang, lang.define, contextId=ctx)
    body = {"code": lang.busy, "contextId": ctx}
    async with agent.client.stream("POST", "/execute", json=body) as stream:
        lines = stream.aiter_lines()
        assert json.loads(await anext(lines)) == {"type": "stdout", "text": "go\n"}
        assert (await agent.client.post(f"/contexts/{ctx}/interrupt")).status_code == 200
        events = [json.loads(line) async for line in lines if line]
    [error] = [e for e in events if e["type"] == "error"]
    assert events[-1]["status"] == "error", events
    after = await run(agent, lang, lang.use, contextId=ctx)
    assert after[-1]["status"] == "ok", after
    if error["name"] != "ContextRestarted":  # stopped by SIGINT, state kept
        assert "42" in json.dumps(after)


@pytest.mark.parametrize("lang", lang_params())
async def test_an_interpreter_that_exits_is_reported_and_restarts(agent: Agent, lang: Lang) -> None:
    await run(agent, lang, lang.define)
    events = await run(agent, lang, lang.crash)
    [error] = [e for e in events if e["type"] == "error"]
    assert error["name"] == "ContextRestarted" and events[-1]["status"] == "error", events
    again = await run(agent, lang, lang.define)
    assert text_of(again) == "set\n" and again[-1]["execution_count"] == 1  # a fresh interpreter


ENV_READ = {
    "java": 'System.getenv("KEY")',
    "ruby": 'ENV["KEY"]',
    "php": 'echo getenv("KEY");',
    "r": 'Sys.getenv("KEY")',
}


@pytest.mark.parametrize("lang", lang_params())
async def test_claim_env_reaches_a_prewarmed_interpreter(start_agent: StartAgent, lang: Lang) -> None:
    agent: Agent = await start_agent(**warm_settings(prewarm=(lang.name,)))
    claimant = "claimant-token-abcdefghijklmnop"
    env = {"KEY": "v1 with spaces\nand a newline"}
    assert (await agent.client.post("/claim", json=signed_claim(claimant, env))).status_code == 200
    agent.client.headers["Authorization"] = f"Bearer {claimant}"
    events = await run(agent, lang, ENV_READ[lang.name])
    assert "v1 with spaces" in json.dumps(events) and events[-1]["status"] == "ok", events


@pytest.mark.parametrize(
    ("language", "binary"), [("java", "jshell"), ("ruby", "ruby"), ("php", "php"), ("r", "R"), ("go", "go")]
)
async def test_a_language_whose_interpreter_the_image_lacks_is_501(
    start_agent: StartAgent, monkeypatch: pytest.MonkeyPatch, language: str, binary: str
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # the agent's environment, so every context's
    agent: Agent = await start_agent()
    r = await agent.client.post("/execute", json={"language": language, "code": "1"})
    assert r.status_code == 501 and r.json()["error"]["code"] == "language_unavailable", r.text
    assert f"{language} needs {binary!r}" in r.json()["error"]["message"]


GO_PROGRAM = """import (
\t"fmt"
\t"os"
)

func main() {
\tfmt.Println("hello from go")
\tfmt.Fprintln(os.Stderr, "to stderr")
\tos.WriteFile("left.txt", []byte("on disk"), 0o644)
}
"""


@needs("go")
async def test_go_builds_and_runs_each_execution_in_the_cwd_and_keeps_no_state(agent: Agent) -> None:
    events = await agent.events("/execute", {"language": "go", "code": GO_PROGRAM, "timeout": 240})
    assert text_of(events) == "hello from go\n" and text_of(events, "stderr") == "to stderr\n", events
    assert events[-1]["status"] == "ok" and events[-1]["execution_count"] == 1
    assert (agent.workspace / "left.txt").read_text() == "on disk"  # the program ran in the context's cwd
    # The package clause may be left out; a variable of the last run is gone (no state), its file is not.
    code = 'import "os"\n\nfunc main() { b, _ := os.ReadFile("left.txt"); os.Stdout.Write(b) }'
    again = await agent.events("/execute", {"language": "go", "code": code, "timeout": 240})
    assert text_of(again) == "on disk" and again[-1]["execution_count"] == 2, again


@needs("go")
async def test_go_compile_errors_exit_codes_and_timeouts(agent: Agent) -> None:
    broken = await agent.events("/execute", {"language": "go", "code": "func main() { undefinedThing() }"})
    [error] = [e for e in broken if e["type"] == "error"]
    assert error["name"] == "CompileError" and "undefinedThing" in error["value"], error
    assert broken[-1]["status"] == "error"
    code = 'import "os"\n\nfunc main() { os.Exit(3) }'
    exited = await agent.events("/execute", {"language": "go", "code": code})
    assert next(e for e in exited if e["type"] == "error")["value"] == "3" and exited[-1]["status"] == "error"
    busy = await agent.events("/execute", {"language": "go", "code": "func main() { for {} }", "timeout": 20})
    assert busy[-1]["status"] == "timeout", busy
    fine = await agent.events("/execute", {"language": "go", "code": 'func main() { println("ok") }'})
    assert text_of(fine, "stderr") == "ok\n" and fine[-1]["status"] == "ok"
