"""Sandbox agent fixtures: a real agent on a loopback port, a real httpx client, a tmp workspace."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ports import free_port
from voltgrid.sandbox_agent.agent import AgentSettings
from voltgrid.sandbox_agent.server import build_app
from voltgrid.sandbox_claims import public_key_text, sign_claim, token_digest

TOKEN = "sandbox-test-token-0123456789"
#: The gateway's claim key in these tests, and the id a warm test sandbox was started with.
CLAIM_KEY = Ed25519PrivateKey.generate()
CLAIM_PUBLIC = public_key_text(CLAIM_KEY)
SANDBOX_ID = "sb-test-0123456789abcdef"


def signed_claim(
    token: str, env: dict[str, str] | None = None, sandbox_id: str = SANDBOX_ID, at: float | None = None
) -> dict[str, str]:
    """The body of ``POST /claim`` as the gateway sends it."""
    issued = time.time() if at is None else at
    return {"claim": sign_claim(CLAIM_KEY, sandbox_id, token_digest(token), env or {}, issued)}


def warm_settings(**overrides: Any) -> dict[str, Any]:
    """``start_agent`` options of a warm pool sandbox: no token, the claim key and its id."""
    return {"token": "", "claim_key": CLAIM_PUBLIC, "sandbox_id": SANDBOX_ID, **overrides}


@dataclass
class Agent:
    url: str
    port: int
    workspace: Path
    client: httpx.AsyncClient

    async def events(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """POST ``body`` and read the NDJSON answer to its end."""
        async with self.client.stream("POST", path, json=body) as r:
            assert r.status_code == 200, (r.status_code, await r.aread())
            assert r.headers["content-type"] == "application/x-ndjson"
            return [json.loads(line) async for line in r.aiter_lines() if line]


def text_of(events: list[dict[str, Any]], kind: str = "stdout") -> str:
    return "".join(e["text"] for e in events if e["type"] == kind)


StartAgent = Callable[..., Any]


def needs(binary: str) -> pytest.MarkDecorator:
    """Skip without ``binary`` on a developer's machine; under CI (``.ci/run`` sets ``CI`` after
    e2e/cluster/install-deps.sh installed every language) a missing one fails the run instead."""
    missing = shutil.which(binary) is None
    if missing and os.environ.get("CI"):
        pytest.fail(f"{binary} is missing under CI: e2e/cluster/install-deps.sh installs it", pytrace=False)
    return pytest.mark.skipif(missing, reason=f"{binary} is not installed (e2e/cluster/install-deps.sh installs it)")


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[StartAgent]:
    """``await start_agent(**settings)`` -> a served :class:`Agent` (workspace ``tmp_path/ws``)."""
    runners: list[web.AppRunner] = []
    clients: list[httpx.AsyncClient] = []

    async def start(**overrides: Any) -> Agent:
        workspace = tmp_path / "ws"
        workspace.mkdir(exist_ok=True)
        settings = AgentSettings(workspace=str(workspace), **{"token": TOKEN, **overrides})
        environ = {**os.environ, "VOLTGRID_SANDBOX_TOKEN": TOKEN, "VOLTGRID_SANDBOX_CLAIM_KEY": CLAIM_PUBLIC}
        runner = web.AppRunner(build_app(settings, environ), shutdown_timeout=1.0, handler_cancellation=True)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        url = f"http://127.0.0.1:{port}"
        client = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        clients.append(client)
        return Agent(url, port, workspace, client)

    yield start
    for client in clients:
        await client.aclose()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def agent(start_agent: StartAgent) -> Agent:
    a: Agent = await start_agent()
    return a
