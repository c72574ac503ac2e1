"""JavaScript through a persistent Node.js process: state, results, errors, async, interrupt, timeout."""

from __future__ import annotations

import json

import pytest

from conftest import Agent, StartAgent, needs, signed_claim, text_of, warm_settings
from voltgrid.sandbox_agent.repl import JavaScriptContext

pytestmark = needs("node")


async def js(agent: Agent, code: str, **body: object) -> list[dict[str, object]]:
    return await agent.events("/execute", {"language": "javascript", "code": code, **body})


async def test_state_persists_and_the_last_value_is_the_result(agent: Agent) -> None:
    first = await js(agent, "var x = 41; function inc(n) { return n + 1 }\nconsole.log('set')")
    assert text_of(first) == "set\n" and first[-1]["status"] == "ok" and first[-1]["execution_count"] == 1
    events = await js(agent, "console.error('to stderr'); ({answer: inc(x)})")
    assert text_of(events, "stderr") == "to stderr\n"
    [result] = [e for e in events if e["type"] == "result"]
    assert result["data"] == {"text/plain": "{ answer: 42 }"} and result["is_main_result"] is True
    assert events[-1]["execution_count"] == 2


async def test_errors_have_name_value_and_stack(agent: Agent) -> None:
    events = await js(agent, "null.boom")
    [error] = [e for e in events if e["type"] == "error"]
    assert error["name"] == "TypeError" and "null" in str(error["value"])
    assert isinstance(error["traceback"], list) and events[-1]["status"] == "error"
    after = await js(agent, "1 + 1")
    assert after[0]["data"] == {"text/plain": "2"}  # the context survives its errors


async def test_a_returned_promise_is_awaited_with_its_output(agent: Agent) -> None:
    code = "(async () => { await new Promise(r => setTimeout(r, 50)); console.log('later'); return 'done' })()"
    events = await js(agent, code)
    assert text_of(events) == "later\n" and events[-2]["data"] == {"text/plain": "'done'"}


async def test_timeout_interrupts_a_busy_loop_and_state_survives(agent: Agent) -> None:
    await js(agent, "var kept = 'yes'")
    events = await js(agent, "while (true) {}", timeout=1)
    assert events[-1]["status"] == "timeout"
    after = await js(agent, "kept")
    assert after[0]["data"] == {"text/plain": "'yes'"}


async def test_interrupt_stops_a_running_script(agent: Agent) -> None:
    ctx = (await agent.client.post("/contexts", json={"language": "javascript"})).json()["id"]
    body = {"code": "console.log('go'); const t = Date.now(); while (Date.now() - t < 60000) {}", "contextId": ctx}
    async with agent.client.stream("POST", "/execute", json=body) as stream:
        lines = stream.aiter_lines()
        assert json.loads(await anext(lines)) == {"type": "stdout", "text": "go\n"}
        assert (await agent.client.post(f"/contexts/{ctx}/interrupt")).status_code == 200
        rest = [json.loads(line) async for line in lines if line]
    # Node.js stops the script on SIGINT, or (when it loses the signal) the agent kills and restarts it.
    [error] = [e for e in rest if e["type"] == "error"]
    assert "interrupted" in str(error["value"]).lower() or error["name"] == "ContextRestarted", error
    assert rest[-1]["status"] == "error"
    again = await js(agent, "'alive'", contextId=ctx)
    assert again[0]["data"] == {"text/plain": "'alive'"}


async def test_claim_env_reaches_a_prewarmed_node(start_agent: StartAgent) -> None:
    agent: Agent = await start_agent(**warm_settings(prewarm=("javascript",)))
    claimant = "claimant-token-abcdefghijklmnop"
    assert (await agent.client.post("/claim", json=signed_claim(claimant, {"KEY": "v1"}))).status_code == 200
    agent.client.headers["Authorization"] = f"Bearer {claimant}"
    events = await js(agent, "process.env.KEY")
    assert events[0]["data"] == {"text/plain": "'v1'"}


async def test_a_language_whose_interpreter_the_image_lacks_is_501(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(JavaScriptContext, "_argv", lambda self: ["/nonexistent/node", "-e", ""])
    r = await agent.client.post("/execute", json={"language": "javascript", "code": "1"})
    assert r.status_code == 501 and r.json()["error"]["code"] == "language_unavailable"
    assert "/nonexistent/node" in r.json()["error"]["message"]
