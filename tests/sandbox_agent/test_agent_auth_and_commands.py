"""The token on every call, bad input as named 4xx, and commands with streamed output, stdin and signals."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from conftest import CLAIM_PUBLIC, SANDBOX_ID, TOKEN, Agent, text_of
from voltgrid.sandbox_agent.__main__ import settings_from
from voltgrid.sandbox_agent.agent import AgentSettings, child_env


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer " + "x" * len(TOKEN)},
        {"Authorization": "Bearer " + TOKEN[:-1]},
        {"Authorization": "Bearer " + TOKEN + "x"},
        {"Authorization": "Basic " + TOKEN},
        {"Authorization": TOKEN},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/execute"), ("GET", "/contexts"), ("POST", "/commands"), ("GET", "/files/x"), ("PUT", "/files/x")],
)
async def test_every_call_without_the_right_token_is_401(
    agent: Agent, headers: dict[str, str], method: str, path: str
) -> None:
    async with httpx.AsyncClient(base_url=agent.url) as anonymous:
        r = await anonymous.request(method, path, headers=headers, json={"code": "open('pwned','w')", "cmd": "id"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    assert list(agent.workspace.iterdir()) == []


async def test_health_needs_no_token(agent: Agent) -> None:
    async with httpx.AsyncClient(base_url=agent.url) as anonymous:
        assert (await anonymous.get("/health")).json() == {"status": "ok", "claimed": True}


async def test_executed_code_and_commands_do_not_see_the_token(agent: Agent) -> None:
    py = await agent.events("/execute", {"code": "import os\nprint(os.environ.get('VOLTGRID_SANDBOX_TOKEN'))"})
    assert text_of(py) == "None\n"
    sh = await agent.events("/commands", {"cmd": "env"})
    assert TOKEN not in text_of(sh)


def test_settings_refuse_a_short_token_and_read_a_token_file(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        AgentSettings(token="short", workspace="/tmp")
    with pytest.raises(ValueError, match="exactly one"):
        AgentSettings(token=TOKEN, claim_key=CLAIM_PUBLIC, sandbox_id=SANDBOX_ID, workspace="/tmp")
    with pytest.raises(ValueError, match="sandbox's id"):
        AgentSettings(claim_key=CLAIM_PUBLIC, workspace="/tmp")
    with pytest.raises(ValueError, match="Ed25519 public key"):
        AgentSettings(claim_key="not a key", sandbox_id=SANDBOX_ID, workspace="/tmp")
    env = {"VOLTGRID_SANDBOX_TOKEN_FILE": "/dev/null", "VOLTGRID_SANDBOX_PORT": "1234"}
    with pytest.raises(ValueError, match="exactly one"):
        settings_from([], env)
    warm_env = {"VOLTGRID_SANDBOX_CLAIM_KEY": CLAIM_PUBLIC, "VOLTGRID_SANDBOX_ID": SANDBOX_ID}
    pool, _, _ = settings_from(["--prewarm", "python,bash"], warm_env)
    assert (pool.claim_key, pool.sandbox_id, pool.token, pool.prewarm) == (
        CLAIM_PUBLIC,
        SANDBOX_ID,
        "",
        ("python", "bash"),
    )
    settings, host, port = settings_from(["--port", "4321"], {"VOLTGRID_SANDBOX_TOKEN": TOKEN, **env})
    assert (settings.token, host, port) == (TOKEN, "0.0.0.0", 4321)
    secret_env = {"VOLTGRID_SANDBOX_TOKEN": TOKEN, "VOLTGRID_SANDBOX_TOKEN_FILE": "f", "HOME": "/h"}
    assert child_env({**secret_env, "VOLTGRID_SANDBOX_CLAIM_KEY": "k"}) == {"HOME": "/h"}


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("/execute", b"not json", 400, "not JSON"),
        ("/execute", b"[1]", 400, "JSON object"),
        ("/execute", b"{}", 400, "'code' is required"),
        ("/execute", b'{"code": 1}', 400, "'code' must be a string"),
        ("/execute", b'{"code": "1", "language": "cobol"}', 400, "cobol"),
        ("/execute", b'{"code": "1", "timeout": true}', 400, "timeout"),
        ("/execute", b'{"code": "1", "timeout": 99999}', 400, "timeout"),
        ("/execute", b'{"code": "1", "contextId": "nope"}', 404, "nope"),
        ("/contexts", b'{"language": "python", "cwd": "../.."}', 403, ".."),
        ("/contexts", b'{"language": "python", "cwd": "missing"}', 404, "missing"),
        ("/commands", b'{"cmd": []}', 400, "'cmd'"),
        ("/commands", b'{"cmd": ["/no/such/binary"]}', 400, "was not found"),
        ("/commands", b'{"cmd": "true", "env": {"A": 1}}', 400, "'env'"),
        ("/commands/abc/signal", b'{"signal": "SIGTERM"}', 404, "abc"),
    ],
)
async def test_bad_input_is_a_4xx_naming_the_problem(
    agent: Agent, path: str, body: bytes, status: int, needle: str
) -> None:
    r = await agent.client.post(path, content=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


async def test_command_streams_output_and_exit_code(agent: Agent) -> None:
    events = await agent.events("/commands", {"cmd": "echo out; echo err >&2; pwd; exit 7", "env": {"X": "1"}})
    assert events[0]["type"] == "start" and events[0]["pid"] > 0
    assert text_of(events) == f"out\n{agent.workspace}\n" and text_of(events, "stderr") == "err\n"
    assert events[-1] == {"type": "exit", "exit_code": 7, "timed_out": False}


async def test_command_stdin_then_eof(agent: Agent) -> None:
    async with agent.client.stream("POST", "/commands", json={"cmd": ["cat"]}) as stream:
        lines = stream.aiter_lines()
        start = json.loads(await anext(lines))
        listed = (await agent.client.get("/commands")).json()
        assert [c["id"] for c in listed] == [start["id"]] and listed[0]["running"]
        r = await agent.client.post(f"/commands/{start['id']}/stdin", content=b"hello ", params={"close": "false"})
        assert r.json() == {"written": 6, "closed": False}
        await agent.client.post(f"/commands/{start['id']}/stdin", content=b"world", params={"close": "true"})
        rest = [json.loads(line) async for line in lines if line]
    assert text_of(rest) == "hello world" and rest[-1]["exit_code"] == 0
    assert (await agent.client.get("/commands")).json() == []


async def test_command_signal_reaches_the_process_group(agent: Agent) -> None:
    async with agent.client.stream("POST", "/commands", json={"cmd": "echo ready; sleep 60 & wait"}) as stream:
        lines = stream.aiter_lines()
        start = json.loads(await anext(lines))
        assert json.loads(await anext(lines))["text"] == "ready\n"
        r = await agent.client.post(f"/commands/{start['id']}/signal", json={"signal": "SIGTERM"})
        assert r.status_code == 200
        bad = await agent.client.post(f"/commands/{start['id']}/signal", json={"signal": "SIGNOPE"})
        assert bad.status_code == 400
        rest = [json.loads(line) async for line in lines if line]
    assert rest[-1]["exit_code"] == -15 and rest[-1]["signal"] == "SIGTERM"


async def test_command_timeout_kills_it_and_its_children(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = await agent.events("/commands", {"cmd": "sleep 60 & sleep 60; echo never", "timeout": 0.5})
    assert loop.time() - started < 10
    assert events[-1]["timed_out"] is True and events[-1]["signal"] == "SIGKILL"
    assert "never" not in text_of(events)


async def test_a_command_whose_client_goes_away_is_killed_with_its_group(agent: Agent) -> None:
    async with agent.client.stream("POST", "/commands", json={"cmd": "sleep 60 & echo $!; wait"}) as stream:
        lines = stream.aiter_lines()
        start = json.loads(await anext(lines))
        child = int(json.loads(await anext(lines))["text"])
    for _ in range(200):
        if (await agent.client.get("/commands")).json() == [] and not _alive(child) and not _alive(start["pid"]):
            break
        await asyncio.sleep(0.05)
    assert (await agent.client.get("/commands")).json() == []
    assert not _alive(child) and not _alive(start["pid"])


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone between the open and the read: ESRCH
        return False
