"""The examples/ manifests are valid resources, and each one works as its comment says.

Functions run exactly as written (their ``command``) on the local-process backend behind a real
gateway, with real clients: HTTP for the echo agent, an SSE reader for the streaming agent, the
official MCP SDK for the tool server. The sandbox's command runs as a plain process and executes code.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from ports import free_port
from voltgrid.api.function import Function
from voltgrid.api.sandbox import Sandbox
from voltgrid.api.sandboxtemplate import SandboxTemplate
from voltgrid.errors import SpecError
from voltgrid.gateway.functions import load_functions

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODELS = {"Function": Function, "Sandbox": Sandbox, "SandboxTemplate": SandboxTemplate}
HDR = "X-Voltgrid-Session"
#: Seconds the sandbox's server may take to listen.
SANDBOX_READY_S = 20.0


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    doc["metadata"]["namespace"] = "default"
    return doc


def example_function(name: str, **env: str) -> Function:
    """The example as written, with ``python3`` meaning this interpreter and optional env overrides."""
    doc = load(name)
    spec = doc["spec"]
    spec["command"] = [sys.executable if spec["command"][0] == "python3" else spec["command"][0], *spec["command"][1:]]
    spec["env"] = [e for e in spec.get("env", []) if e["name"] not in env] + [
        {"name": k, "value": v} for k, v in env.items()
    ]
    return Function.model_validate(doc)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_a_valid_resource(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        MODELS[doc["kind"]].model_validate(doc)


async def test_echo_agent_keeps_each_session_apart(replicas, http: aiohttp.ClientSession) -> None:
    (gw,) = await replicas([example_function("echo-function.yaml")])
    url = f"{gw.url}/fn/default/echo/"
    async with http.get(url) as r:
        minted = r.headers[HDR]
        assert (await r.json())["session"] == minted
    seen = []
    for session, body in [("demo-a", "one"), ("demo-a", "two"), ("demo-b", "three")]:
        async with http.post(url, data=body, headers={HDR: session}) as r:
            assert r.status == 200
            seen.append(await r.json())
    assert [(s["session"], s["requests"], s["echo"]) for s in seen] == [
        ("demo-a", 1, "one"),
        ("demo-a", 2, "two"),
        ("demo-b", 1, "three"),
    ]
    assert seen[0]["instance"] == seen[1]["instance"] != seen[2]["instance"]


async def test_sse_agent_streams_tokens_as_they_come(replicas, http: aiohttp.ClientSession) -> None:
    (gw,) = await replicas([example_function("sse-agent.yaml", TOKEN_DELAY_SECONDS="0.3")])
    url = f"{gw.url}/fn/default/sse-agent/"
    async with http.get(url, headers={HDR: "chat-1"}) as r:
        assert r.status == 400 and "prompt" in (await r.json())["error"]
    started = time.monotonic()
    async with http.get(url, params={"prompt": "a b c d e"}, headers={HDR: "chat-1"}) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        first = await r.content.readuntil(b"\n\n")
        first_at = time.monotonic() - started
        rest = (await r.read()).decode()
        total = time.monotonic() - started
    assert first == b'event: token\ndata: {"token": "You", "index": 0}\n\n'
    assert first_at < total - 1.0  # the first token arrived long before the answer ended
    events = [block.split("\n") for block in rest.strip().split("\n\n")]
    assert events[-1] == ["event: done", 'data: {"tokens": 7}']
    assert [json.loads(e[1][6:])["token"] for e in events[:-1]] == ["said:", "a", "b", "c", "d", "e"]


async def _notes_session(url: str, notes: list[str]) -> tuple[list[str], list[str]]:
    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = sorted(t.name for t in (await session.list_tools()).tools)
        for text in notes:
            added = await session.call_tool("add_note", {"text": text})
            assert not added.is_error
        bad = await session.call_tool("add_note", {"text": ""})
        assert bad.is_error  # a tool error is an answer, not a broken session
        listed = await session.call_tool("list_notes", {})
        assert listed.structured_content is not None
        return tools, listed.structured_content["notes"]


async def test_mcp_server_example_with_the_official_sdk(replicas) -> None:
    a, b = await replicas([example_function("mcp-server.yaml")], n=2)
    results = await asyncio.gather(
        _notes_session(f"{a.url}/fn/default/notes/mcp", ["alpha", "beta"]),
        _notes_session(f"{b.url}/fn/default/notes/mcp", ["gamma"]),
    )
    assert results == [(["add_note", "list_notes"], ["alpha", "beta"]), (["add_note", "list_notes"], ["gamma"])]


@pytest.fixture
async def interpreter(tmp_path: Path) -> AsyncIterator[str]:
    spec = load("code-interpreter-sandbox.yaml")["spec"]
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *spec["command"][1:], env={**os.environ, "PORT": str(port)}, cwd=tmp_path
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + SANDBOX_READY_S
            while True:
                try:
                    async with http.get(url) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    if time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        await proc.wait()


async def test_code_interpreter_runs_code_and_refuses_bad_requests(interpreter: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{interpreter}/run", json={"code": "print(6 * 7)"}) as r:
            assert await r.json() == {"exitCode": 0, "timedOut": False, "stdout": "42\n", "stderr": ""}
        async with http.post(f"{interpreter}/run", json={"code": "raise SystemExit(3)"}) as r:
            assert (await r.json())["exitCode"] == 3
        async with http.post(f"{interpreter}/run", json={"code": "while True: pass", "timeout": 0.5}) as r:
            assert (await r.json())["timedOut"] is True
        for bad in ({"code": 1}, {"nope": ""}, {"code": "1", "timeout": 600}):
            async with http.post(f"{interpreter}/run", json=bad) as r:
                assert r.status == 400 and "code" in (await r.json())["error"]
        async with http.post(f"{interpreter}/run", data=b"not json") as r:
            assert r.status == 400


def test_loading_every_example_serves_the_functions_and_names_what_it_skips(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    functions = load_functions(sorted(EXAMPLES.glob("*.yaml")))
    assert sorted(f.metadata.name or "" for f in functions) == ["a2a-agent", "echo", "grpc-echo", "notes", "sse-agent"]
    assert "skipping Sandbox interpreter: the gateway serves Functions only" in caplog.text
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(SpecError, match="not a Kubernetes object"):
        load_functions([scalar])
