"""Idle release with preStop, wake with the same storage, expiry — through real instance processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from gwhelpers import ADMIN, function

HDR = "X-Voltgrid-Session"


async def _wait_for(predicate, limit: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_idle_release_calls_prestop_once_then_wakes_with_files(
    replicas, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    log = tmp_path / "prestop.log"
    fn = function(
        "agent", env={"PRESTOP_LOG": str(log)}, idleTimeout="1s", preStop={"path": "/prestop", "timeout": "2s"}
    )
    (gw,) = await replicas([fn])
    async with http.get(f"{gw.url}/fn/default/agent/whoami") as r:
        sid = r.headers[HDR]
        first = await r.json()
    async with http.put(f"{gw.url}/fn/default/agent/files/notes.txt", data=b"remember me", headers={HDR: sid}) as r:
        assert r.status == 200
    backend = gw.backend
    assert [i.id for i in await backend.list(session=sid)] == [first["instance"]]

    await _wait_for(lambda: log.exists() and gw.gateway.manager.registry.find("default/agent", sid).instance is None)
    await asyncio.sleep(1.5)  # more idle periods pass: still exactly one call
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [{"instance": first["instance"], "sessionId": sid, "reason": "idle"}]
    assert await backend.list(session=sid) == []  # the instance went away

    async with http.get(f"{gw.url}/fn/default/agent/files/notes.txt", headers={HDR: sid}) as r:
        assert r.status == 200 and await r.read() == b"remember me"
    async with http.get(f"{gw.url}/fn/default/agent/files/memory.json", headers={HDR: sid}) as r:
        assert (await r.json(content_type=None))["reason"] == "idle"  # what preStop saved is there too
    async with http.get(f"{gw.url}/fn/default/agent/whoami", headers={HDR: sid}) as r:
        woken = await r.json()
    assert woken["instance"] != first["instance"] and woken["storage"] == first["storage"]
    async with http.get(f"{gw.url}/_voltgrid/v1/functions/default/agent/sessions/{sid}", headers=ADMIN) as r:
        session = await r.json()
    assert session["state"] == "Active" and session["usage"]["requests"] == 5


async def test_max_lifetime_expires_the_session(replicas, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    log = tmp_path / "prestop.log"
    fn = function(
        "short",
        env={"PRESTOP_LOG": str(log)},
        idleTimeout="1s",
        maxLifetime="1s",
        preStop={"path": "/prestop", "timeout": "2s"},
    )
    (gw,) = await replicas([fn])
    async with http.get(f"{gw.url}/fn/default/short/whoami") as r:
        sid = r.headers[HDR]
    await _wait_for(lambda: gw.gateway.manager.registry.find("default/short", sid) is None)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(c["sessionId"], c["reason"]) for c in calls] == [(sid, "expired")]
    assert await gw.backend.list(session=sid) == []


async def test_warm_pool_gives_new_sessions_a_pre_minted_id(replicas, http: aiohttp.ClientSession) -> None:
    fn = function("warm")
    fn.spec.scaling.warm_pool = 1
    (gw,) = await replicas([fn])
    await _wait_for(lambda: gw.gateway.manager.warm.size("default/warm") == 1)
    (warm,) = gw.gateway.manager.warm.instances()
    async with http.get(f"{gw.url}/fn/default/warm/whoami") as r:
        body = await r.json()
    assert r.headers[HDR] == warm.session == body["session"] and body["instance"] == warm.id
    await _wait_for(lambda: gw.gateway.manager.warm.size("default/warm") == 1)  # refilled behind it
