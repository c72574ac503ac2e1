"""An A2A agent (official a2a-sdk server, JSON-RPC binding) used as a function in gateway tests.

It keeps each A2A context's history in its memory only, the way an agent keeps a conversation, and
says so in every answer: "message N in context C on instance I". An answer whose N restarts at 1 for
a context already used, or whose I changes, proves a request of that context reached another
instance. Every message becomes a task (submitted, working, an artifact, completed) so that task ids
exist for ``GetTask``/``SubscribeToTask``; the 0.3 method names are served too.

Environment: ``PORT`` (required); ``A2A_PUBLIC_URL``, the URL clients reach it at (the gateway's
function URL behind Voltgrid; the agent card advertises it); ``VOLTGRID_INSTANCE_ID`` names the
instance (hostname and pid without it).
"""

from __future__ import annotations

import collections
import os
import socket

import uvicorn
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Role
from starlette.applications import Starlette

INSTANCE = os.environ.get("VOLTGRID_INSTANCE_ID") or f"{socket.gethostname()}:{os.getpid()}"


class CountingAgent(AgentExecutor):
    """Answers each message with its number within its context (the context's memory)."""

    def __init__(self) -> None:
        self.messages: collections.Counter[str] = collections.Counter()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None and context.context_id is not None
        task = context.current_task
        if task is None:
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        self.messages[context.context_id] += 1
        text = f"message {self.messages[context.context_id]} in context {context.context_id} on instance {INSTANCE}"
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        await updater.add_artifact([new_text_part(text)], name="answer")
        await updater.complete(
            new_text_message(text, context_id=task.context_id, task_id=task.id, role=Role.ROLE_AGENT)
        )

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None and context.context_id is not None
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def agent_card(url: str) -> AgentCard:
    return AgentCard(
        name="voltgrid-counter",
        description="Counts the messages of each A2A context, in memory.",
        version="1.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="count", name="count", description="Numbers the messages of a context.", tags=["test"])],
    )


def build_app(url: str) -> Starlette:
    card = agent_card(url)
    handler = DefaultRequestHandler(agent_executor=CountingAgent(), task_store=InMemoryTaskStore(), agent_card=card)
    routes = create_agent_card_routes(card) + create_jsonrpc_routes(handler, "/", enable_v0_3_compat=True)
    return Starlette(routes=routes)


if __name__ == "__main__":
    port = int(os.environ["PORT"])
    public_url = os.environ.get("A2A_PUBLIC_URL") or f"http://127.0.0.1:{port}/"
    uvicorn.run(build_app(public_url), host="127.0.0.1", port=port, log_level="warning")
