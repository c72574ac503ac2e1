"""Execution through a real Jupyter kernel and a real Bash, over real HTTP: events, state, timeouts."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from conftest import Agent, text_of
from voltgrid.sandbox_agent.repl import EndMarker

# A 1x1 PNG: the bytes IPython's Image display sends back base64-encoded as image/png.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


async def test_python_streams_stdout_stderr_result_and_end_with_execution_count(agent: Agent) -> None:
    events = await agent.events("/execute", {"code": "import sys\nprint('out')\nprint('err', file=sys.stderr)\n6*7"})
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "end" and kinds.count("end") == 1
    assert text_of(events) == "out\n" and text_of(events, "stderr") == "err\n"
    [result] = [e for e in events if e["type"] == "result"]
    assert result == {"type": "result", "data": {"text/plain": "42"}, "is_main_result": True}
    assert events[-1]["status"] == "ok" and events[-1]["execution_count"] == 1


async def test_python_state_persists_between_executions(agent: Agent) -> None:
    await agent.events("/execute", {"code": "x = 41"})
    events = await agent.events("/execute", {"code": "x + 1"})
    assert events[0]["data"]["text/plain"] == "42"
    assert events[-1]["execution_count"] == 2


async def test_python_rich_display_html_png_json(agent: Agent) -> None:
    code = (
        "import base64\nfrom IPython.display import HTML, JSON, Image, display\n"
        f"display(HTML('<b>hi</b>'))\ndisplay(Image(data=base64.b64decode({base64.b64encode(PNG).decode()!r})))\n"
        "display(JSON({'a': 1}))\n"
    )
    events = await agent.events("/execute", {"code": code})
    bundles = [e["data"] for e in events if e["type"] == "result"]
    assert bundles[0]["text/html"] == "<b>hi</b>"
    assert base64.b64decode(bundles[1]["image/png"]) == PNG
    assert bundles[2]["application/json"] == {"a": 1}
    assert all(e["is_main_result"] is False for e in events if e["type"] == "result")


async def test_python_error_has_name_value_and_plain_traceback(agent: Agent) -> None:
    events = await agent.events("/execute", {"code": "def f():\n    raise ValueError('bad value')\nf()"})
    [error] = [e for e in events if e["type"] == "error"]
    assert (error["name"], error["value"]) == ("ValueError", "bad value")
    assert any("raise ValueError" in line for line in error["traceback"])
    assert not any("\x1b[" in line for line in error["traceback"])
    assert events[-1]["status"] == "error"


async def test_python_timeout_interrupts_and_the_context_stays_usable(agent: Agent) -> None:
    await agent.events("/execute", {"code": "kept = 'yes'"})
    sleeper = "import time\nprint('start', flush=True)\ntime.sleep(60)"
    events = await agent.events("/execute", {"code": sleeper, "timeout": 1})
    assert text_of(events) == "start\n"
    assert events[-2]["name"] == "TimeoutError" and events[-1]["status"] == "timeout"
    after = await agent.events("/execute", {"code": "kept"})
    assert after[0]["data"]["text/plain"] == "'yes'"


async def test_python_interrupt_stops_a_running_execution(agent: Agent) -> None:
    r = await agent.client.post("/contexts", json={"language": "python"})
    ctx = r.json()["id"]
    async with agent.client.stream(
        "POST", "/execute", json={"code": "import time\nprint('go', flush=True)\ntime.sleep(60)", "contextId": ctx}
    ) as stream:
        lines = stream.aiter_lines()
        assert json.loads(await anext(lines)) == {"type": "stdout", "text": "go\n"}
        assert (await agent.client.post(f"/contexts/{ctx}/interrupt")).status_code == 200
        rest = [json.loads(line) async for line in lines if line]
    assert rest[0]["type"] == "error" and rest[0]["name"] == "KeyboardInterrupt"
    assert rest[-1]["status"] == "error"


async def test_contexts_create_with_cwd_list_restart_delete(agent: Agent) -> None:
    (agent.workspace / "proj").mkdir()
    r = await agent.client.post("/contexts", json={"language": "python", "cwd": "proj"})
    assert r.status_code == 201
    ctx = r.json()
    assert ctx["cwd"] == str(agent.workspace / "proj") and ctx["language"] == "python"
    events = await agent.events("/execute", {"code": "import os\nv = 1\nos.getcwd()", "contextId": ctx["id"]})
    assert events[0]["data"]["text/plain"] == repr(str(agent.workspace / "proj"))
    assert [c["id"] for c in (await agent.client.get("/contexts")).json()] == [ctx["id"]]
    assert (await agent.client.post(f"/contexts/{ctx['id']}/restart")).json()["executionCount"] == 0
    events = await agent.events("/execute", {"code": "v", "contextId": ctx["id"]})
    assert [e["name"] for e in events if e["type"] == "error"] == ["NameError"]
    assert (await agent.client.delete(f"/contexts/{ctx['id']}")).status_code == 200
    r = await agent.client.post("/execute", json={"code": "1", "contextId": ctx["id"]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


async def test_bash_keeps_variables_and_cwd_and_reports_exit_codes(agent: Agent) -> None:
    (agent.workspace / "sub").mkdir()
    first = await agent.events("/execute", {"language": "bash", "code": "export GREETING=hello\ncd sub\necho one"})
    assert text_of(first) == "one\n" and first[-1]["status"] == "ok"
    events = await agent.events("/execute", {"language": "bash", "code": "echo $GREETING $(basename $PWD)\necho e >&2"})
    assert text_of(events) == "hello sub\n" and text_of(events, "stderr") == "e\n"
    failed = await agent.events("/execute", {"language": "bash", "code": "false"})
    assert [e["value"] for e in failed if e["type"] == "error"] == ["1"] and failed[-1]["status"] == "error"
    assert failed[-1]["execution_count"] == 3


async def test_bash_output_without_newline_and_exit_recovers(agent: Agent) -> None:
    events = await agent.events("/execute", {"language": "bash", "code": "printf partial"})
    assert text_of(events) == "partial" and events[-1]["status"] == "ok"
    gone = await agent.events("/execute", {"language": "bash", "code": "exit 3"})
    assert gone[-1]["status"] == "error"
    again = await agent.events("/execute", {"language": "bash", "code": "echo back"})
    assert text_of(again) == "back\n"


async def test_bash_timeout_interrupts_and_the_shell_survives(agent: Agent) -> None:
    await agent.events("/execute", {"language": "bash", "code": "KEEP=kept"})
    events = await agent.events("/execute", {"language": "bash", "code": "sleep 60", "timeout": 1})
    assert events[-1]["status"] == "timeout"
    after = await agent.events("/execute", {"language": "bash", "code": "echo $KEEP"})
    assert text_of(after) == "kept\n"


async def test_a_busy_context_makes_a_second_execution_wait(agent: Agent) -> None:
    slow = asyncio.ensure_future(agent.events("/execute", {"code": "import time\ntime.sleep(1)\n'first'"}))
    await asyncio.sleep(0.3)
    second = await agent.events("/execute", {"code": "'second'"})
    first = await slow
    assert (first[0]["data"]["text/plain"], first[-1]["execution_count"]) == ("'first'", 1)
    assert (second[0]["data"]["text/plain"], second[-1]["execution_count"]) == ("'second'", 2)


async def test_a_client_that_goes_away_stops_its_python_code(agent: Agent) -> None:
    sleeper = "import time\nprint('go', flush=True)\ntime.sleep(60)\nprint('finished')"
    async with agent.client.stream("POST", "/execute", json={"code": sleeper}) as stream:
        assert json.loads(await anext(stream.aiter_lines()))["text"] == "go\n"
    loop = asyncio.get_running_loop()
    started = loop.time()
    after = await agent.events("/execute", {"code": "'free'", "timeout": 20})
    assert after[0]["data"]["text/plain"] == "'free'" and loop.time() - started < 10


async def test_a_client_that_goes_away_stops_its_bash_code(agent: Agent) -> None:
    async with agent.client.stream("POST", "/execute", json={"language": "bash", "code": "echo go; sleep 60"}) as s:
        assert json.loads(await anext(s.aiter_lines()))["text"] == "go\n"
    loop = asyncio.get_running_loop()
    started = loop.time()
    after = await agent.events("/execute", {"language": "bash", "code": "echo free", "timeout": 20})
    assert text_of(after) == "free\n" and loop.time() - started < 10


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 64])
def test_bash_marker_is_found_across_any_split_and_output_is_not_held_back(chunk: int) -> None:
    token = b"__END_abc__"
    stream = b"out _E __ line\n" + token + b"0\n"
    marker = EndMarker(token)
    emitted = b""
    for i in range(0, len(stream), chunk):
        emitted += marker.feed(stream[i : i + chunk])
    assert (emitted, marker.found, marker.trailer) == (b"out _E __ line\n", True, b"0")
    assert EndMarker(token).feed(b"go\n") == b"go\n"  # nothing that could start the marker waits
    assert EndMarker(token).feed(b"go __E") == b"go "


async def test_python_matplotlib_chart_comes_back_as_png(agent: Agent) -> None:
    """ipykernel's inline backend (its default, no configuration): ``plt.show()`` and a figure as
    the last expression both display the chart as ``image/png``. matplotlib is in the dev extra (the images carry
    Debian's python3-matplotlib)."""
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('chart')\nplt.show()"
    events = await agent.events("/execute", {"code": code})
    [chart] = [e for e in events if e["type"] == "result" and "image/png" in e["data"]]
    assert base64.b64decode(chart["data"]["image/png"]).startswith(b"\x89PNG\r\n\x1a\n")
    assert chart["is_main_result"] is False and events[-1]["status"] == "ok"
    fig = await agent.events("/execute", {"code": "fig, ax = plt.subplots()\nax.bar(['a', 'b'], [1, 2])\nfig"})
    pngs = [e for e in fig if e["type"] == "result" and "image/png" in e["data"]]
    assert pngs and base64.b64decode(pngs[0]["data"]["image/png"]).startswith(b"\x89PNG"), fig
