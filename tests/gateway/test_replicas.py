"""Two gateway replicas: one-hop forwarding to the owner, and losing a replica mid-traffic."""

from __future__ import annotations

import asyncio

import aiohttp
from gwhelpers import ADMIN, function

HDR = "X-Voltgrid-Session"


async def test_killing_one_of_two_replicas_mid_traffic_loses_no_session(replicas) -> None:
    a, b = await replicas([function("echo")], n=2)
    async with aiohttp.ClientSession() as http:
        sessions = {}
        for i in range(4):
            async with http.get(f"{(a, b)[i % 2].url}/fn/default/echo/whoami") as r:
                sid = r.headers[HDR]
                sessions[sid] = (await r.json())["instance"]
            async with http.put(f"{b.url}/fn/default/echo/files/id", data=sid.encode(), headers={HDR: sid}) as r:
                assert r.status == 200
        assert {a.gateway.membership.owner(s) for s in sessions} == {a.url, b.url}  # both own some

        killed = asyncio.Event()
        failures_after_kill = []

        async def traffic(sid: str) -> None:
            for n in range(30):
                target = b if killed.is_set() or n % 2 else a
                try:
                    async with http.get(f"{target.url}/fn/default/echo/files/id", headers={HDR: sid}) as r:
                        body = await r.read()
                        if killed.is_set() and target is b and (r.status, body) != (200, sid.encode()):
                            failures_after_kill.append((sid, r.status, body))
                except aiohttp.ClientError:
                    assert target is a  # only requests to the dying replica may fail
                await asyncio.sleep(0.01)

        async def kill_a() -> None:
            await asyncio.sleep(0.15)
            killed.set()
            await a.kill()

        await asyncio.gather(kill_a(), *(traffic(s) for s in sessions))
        assert failures_after_kill == []
        for sid, instance in sessions.items():  # every session still reaches its own instance
            async with http.get(f"{b.url}/fn/default/echo/whoami", headers={HDR: sid}) as r:
                assert (await r.json())["instance"] == instance


async def test_session_api_lists_sessions_of_every_replica(replicas) -> None:
    a, b = await replicas([function("echo")], n=2)
    api = "/_voltgrid/v1/functions/default/echo/sessions"
    async with aiohttp.ClientSession() as http:
        ids = []
        for i in range(6):
            async with http.post(f"{(a, b)[i % 2].url}{api}", json={"sessionId": f"user-{i}"}, headers=ADMIN) as r:
                assert r.status == 201, await r.text()
                ids.append((await r.json())["sessionId"])
        async with http.get(f"{a.url}{api}", headers=ADMIN) as r:
            listed = [s["sessionId"] for s in (await r.json())["items"]]
        assert sorted(listed) == sorted(ids)
        async with http.post(f"{b.url}{api}", json={"sessionId": "user-0"}, headers=ADMIN) as r:
            assert r.status == 409
        owners = {a.gateway.membership.owner(s) for s in ids}
        assert owners == {a.url, b.url}
        async with http.post(f"{a.url}{api}/user-3/renew", json={"maxLifetime": "2h"}, headers=ADMIN) as r:
            assert r.status == 200 and (await r.json())["sessionId"] == "user-3"
        async with http.delete(f"{b.url}{api}/user-3", headers=ADMIN) as r:
            assert r.status == 200
        async with http.get(f"{a.url}{api}/user-3", headers=ADMIN) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "session_not_found"
