"""The example A2A agent (tests/gateway/apps/a2a_agent.py) driven by the official a2a-sdk client:
directly, and (once the new data path routes A2A) through two gateway replicas.

The direct test records every body the SDK client sends and every answer as it streams in, and runs
them through :mod:`voltgrid.gateway.a2a`, so what the gateway will read is checked against what the
SDK really puts on the wire.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
)
from gwhelpers import APPS, function
from test_examples import example_function, load

from ports import free_port
from voltgrid.gateway.a2a import A2ARequest, Learned, StreamScanner, learn_from_result, request_routing

#: "message N in context C on instance I", as the example agent answers.
ANSWER = re.compile(r"message (\d+) in context (\S+) on instance (\S+)")
#: Seconds the agent process may take to answer its card.
AGENT_READY_S = 20.0


@dataclass
class Wire:
    """What crossed the wire, read the way the gateway reads it: each request's routing, and what
    each answer taught (JSON answers whole, SSE answers chunk by chunk as they arrived)."""

    routings: list[A2ARequest] = field(default_factory=list)
    learned: list[Learned] = field(default_factory=list)


class Recording(httpx.AsyncBaseTransport):
    """The SDK client's HTTP transport, passing every body through :mod:`voltgrid.gateway.a2a`."""

    def __init__(self, wire: Wire) -> None:
        self._wire = wire
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self._wire.routings.append(request_routing(request.content))
        response = await self._inner.handle_async_request(request)
        if request.method != "POST":
            return response
        streaming = response.headers.get("content-type", "").startswith("text/event-stream")
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Teed(response, self._wire, StreamScanner() if streaming else None),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _Teed(httpx.AsyncByteStream):
    def __init__(self, response: httpx.Response, wire: Wire, scanner: StreamScanner | None) -> None:
        self._response, self._wire, self._scanner = response, wire, scanner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        body = bytearray()
        async for chunk in self._response.aiter_raw():
            if self._scanner is not None:
                learned = self._scanner.feed(chunk)
                if learned.context_id is not None or learned.tasks:
                    self._wire.learned.append(learned)
            else:
                body += chunk
            yield chunk
        if self._scanner is None:
            self._wire.learned.append(learn_from_result(bytes(body)))

    async def aclose(self) -> None:
        await self._response.aclose()


def card(url: str) -> AgentCard:
    """The agent's card as a client configures it: the JSON-RPC binding at ``url``, streaming."""
    return AgentCard(
        name="voltgrid-counter",
        version="1.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True),
    )


def user_message(text: str, context_id: str = "") -> SendMessageRequest:
    message = Message(message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text=text)], context_id=context_id)
    return SendMessageRequest(message=message)


async def converse(url: str, request: SendMessageRequest, streaming: bool, wire: Wire) -> list[StreamResponse]:
    http = httpx.AsyncClient(transport=Recording(wire), timeout=30)
    client = await create_client(card(url), ClientConfig(streaming=streaming, httpx_client=http))
    async with http, client:
        return [event async for event in client.send_message(request)]


def answer_of(events: list[StreamResponse]) -> tuple[int, str, str]:
    """(N, context, instance) of the agent's final answer."""
    final = events[-1]
    message = final.task.status.message if final.HasField("task") else final.status_update.status.message
    found = ANSWER.fullmatch(message.parts[0].text)
    assert found is not None, message
    return int(found[1]), found[2], found[3]


#: The agent as a command: the a2a-sdk app, and examples/a2a-agent.yaml as its manifest runs it.
AGENTS = {
    "sdk": [sys.executable, str(APPS / "a2a_agent.py")],
    "example": [sys.executable, *load("a2a-agent.yaml")["spec"]["command"][1:]],
}


@pytest.fixture(params=sorted(AGENTS))
async def agent_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The agent as a plain process on a loopback port (no gateway)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    environment = {**os.environ, "PORT": str(port), "A2A_PUBLIC_URL": url}
    process = await asyncio.create_subprocess_exec(*AGENTS[request.param], env=environment)
    try:
        async with httpx.AsyncClient() as http:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + AGENT_READY_S
            while True:
                try:
                    if (await http.get(url + ".well-known/agent-card.json")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert loop.time() < deadline and process.returncode is None, "the agent did not start"
                await asyncio.sleep(0.05)
        yield url
    finally:
        process.terminate()
        await process.wait()


async def test_the_example_agent_with_the_official_sdk_client(agent_url: str) -> None:
    wire = Wire()
    first = await converse(agent_url, user_message("hello"), streaming=False, wire=wire)
    n, context, instance = answer_of(first)
    task_id = first[-1].task.id
    assert (n, context) == (1, first[-1].task.context_id)
    follow_up = await converse(agent_url, user_message("again", context), streaming=False, wire=wire)
    streamed = await converse(agent_url, user_message("and streamed", context), streaming=True, wire=wire)
    other = await converse(agent_url, user_message("someone else"), streaming=True, wire=wire)
    assert answer_of(follow_up) == (2, context, instance)
    assert answer_of(streamed) == (3, context, instance)
    assert answer_of(other)[0] == 1 and answer_of(other)[1] != context
    assert [e.WhichOneof("payload") for e in streamed] == ["task", "status_update", "artifact_update", "status_update"]
    http = httpx.AsyncClient(transport=Recording(wire), timeout=30)
    client = await create_client(card(agent_url), ClientConfig(streaming=False, httpx_client=http))
    async with http, client:
        task = await client.get_task(GetTaskRequest(id=task_id))
    assert (task.id, task.context_id) == (task_id, context)
    # What the gateway would have read from the same bytes:
    streamed_task, other_task = streamed[0].task, other[0].task
    other_context = other_task.context_id
    assert wire.routings == [
        A2ARequest("SendMessage"),
        A2ARequest("SendMessage", context),
        A2ARequest("SendStreamingMessage", context),
        A2ARequest("SendStreamingMessage"),
        A2ARequest("GetTask", task_id=task_id),
    ]
    assert wire.learned == [
        Learned(context, ((task_id, context),)),
        Learned(context, ((follow_up[-1].task.id, context),)),
        Learned(context, ((streamed_task.id, context),)),
        Learned(other_context, ((other_task.id, other_context),)),
        Learned(context, ((task_id, context),)),
    ]


@pytest.mark.parametrize("agent", sorted(AGENTS))
async def test_a_context_sticks_to_its_instance_across_two_replicas(replicas: Callable[..., Any], agent: str) -> None:
    """The conversation starts on replica A; its follow-ups (JSON, streamed, by task id) go to B."""
    sdk_app = function("a2a-agent", "a2a_agent.py", affinity="A2A")
    fn = sdk_app if agent == "sdk" else example_function("a2a-agent.yaml")
    a, b = await replicas([fn], n=2)
    at_a, at_b = (f"{gw.url}/fn/default/a2a-agent/" for gw in (a, b))
    wire = Wire()
    first = await converse(at_a, user_message("hello"), streaming=False, wire=wire)
    n, context, instance = answer_of(first)
    assert n == 1
    follow_up = await converse(at_b, user_message("again", context), streaming=False, wire=wire)
    streamed = await converse(at_b, user_message("and streamed", context), streaming=True, wire=wire)
    assert answer_of(follow_up) == (2, context, instance)
    assert answer_of(streamed) == (3, context, instance)
    other = await converse(at_b, user_message("someone else"), streaming=True, wire=wire)
    assert answer_of(other)[0] == 1 and answer_of(other)[2] != instance  # its own session, its own instance
    http = httpx.AsyncClient(timeout=30)
    client = await create_client(card(at_b), ClientConfig(streaming=False, httpx_client=http))
    async with http, client:
        task = await client.get_task(GetTaskRequest(id=first[-1].task.id))  # only the task id routes it
    assert task.context_id == context and len(task.history) >= 1
    sessions = {r.key for gw in (a, b) for shard in gw.gateway.manager.registry.shards() for r in shard.values()}
    assert {context, answer_of(other)[1]} <= sessions  # each bound by the context id the agent minted
