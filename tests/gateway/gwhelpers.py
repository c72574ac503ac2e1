"""Helpers of the gateway tests: Function factories, a fake backend, replica handles."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from ports import free_port
from voltgrid.api.function import Function
from voltgrid.backends.base import Instance, InstanceBackend, function_key
from voltgrid.gateway.app import GatewayServer
from voltgrid.gateway.core import Gateway

APPS = Path(__file__).parent / "apps"
TOKEN = "test-internal-token"
#: The operator token of the Session API in gateways the fixtures start.
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@asynccontextmanager
async def serving(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], **app_options: Any
) -> AsyncIterator[str]:
    """``handler`` answering every method and path on a free loopback port; yields its base URL."""
    app = web.Application(**app_options)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def function(name: str, app: str = "echo_function.py", env: dict[str, str] | None = None, **sessions: Any) -> Function:
    spec: dict[str, Any] = {
        "image": "local",
        "command": [sys.executable, str(APPS / app)],
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        "sessions": sessions,
    }
    return Function.model_validate({"metadata": {"name": name, "namespace": "default"}, "spec": spec})


@dataclass
class Replica:
    url: str
    gateway: Gateway
    server: GatewayServer
    backend: InstanceBackend
    stopped: bool = False

    async def kill(self) -> None:
        """Stop serving at once (its instances stay, like pods when a gateway pod dies)."""
        await self.stop()

    async def stop(self) -> None:
        """Shut the replica's server down, once (a killed replica is not cleaned up again at teardown)."""
        if not self.stopped:
            self.stopped = True
            await self.server.stop()


class FakeBackend:
    """Instances that all point at one in-process upstream (no processes: fast tests)."""

    def __init__(self, url: str, start_delay: float = 0.0) -> None:
        self.url = url
        self.start_delay = start_delay
        self.created: list[Instance] = []
        self.deleted: list[str] = []
        self.checkpoints: list[tuple[str, float]] = []
        self.lists = 0

    async def create(self, fn: Function, session_id: str, *, warm: bool = False) -> Instance:
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        instance = Instance(
            id=f"fake-{len(self.created)}", function=function_key(fn), url=self.url, session=session_id, warm=warm
        )
        self.created.append(instance)
        return instance

    async def delete(self, instance: Instance) -> None:
        self.deleted.append(instance.id)

    async def list(self, function: str | None = None, session: str | None = None) -> list[Instance]:
        self.lists += 1
        return [
            i
            for i in self.created
            if i.id not in self.deleted
            and (function is None or i.function == function)
            and (session is None or i.session == session)
        ]

    async def checkpoint(self, instance: Instance, when: float) -> None:
        self.checkpoints.append((instance.id, when))
        for created in self.created:  # what a pod annotation does: later LISTs see it
            if created.id == instance.id:
                created.last_active = when

    async def close(self) -> None:
        pass
