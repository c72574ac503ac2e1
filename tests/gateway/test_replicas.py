"""Two gateway replicas: one-hop forwarding to the owner, and losing a replica mid-traffic."""

from __future__ import annotations

import asyncio

import aiohttp
from gwhelpers import ADMIN, function

from voltgrid.registry.ownership import rank

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


def ids_owned_by_each(members: list[str], per_member: int) -> list[str]:
    """Client-chosen session ids, ``per_member`` owned by each member: taken from the ring, not left
    to luck (the replicas' ports are the OS's, so a fixed list would all hash to one of them at times)."""
    owned: dict[str, list[str]] = {m: [] for m in members}
    i = 0
    while any(len(ids) < per_member for ids in owned.values()):
        candidate = f"user-{i}"
        owner = rank(candidate, members)[0]
        if len(owned[owner]) < per_member:
            owned[owner].append(candidate)
        i += 1
    return [sid for pair in zip(*owned.values(), strict=True) for sid in pair]


async def test_session_api_lists_sessions_of_every_replica(replicas) -> None:
    a, b = await replicas([function("echo")], n=2)
    api = "/_voltgrid/v1/functions/default/echo/sessions"
    wanted = ids_owned_by_each([a.url, b.url], 3)
    async with aiohttp.ClientSession() as http:
        ids = []
        for i, sid in enumerate(wanted):
            async with http.post(f"{(a, b)[i % 2].url}{api}", json={"sessionId": sid}, headers=ADMIN) as r:
                assert r.status == 201, await r.text()
                ids.append((await r.json())["sessionId"])
        assert ids == wanted
        async with http.get(f"{a.url}{api}", headers=ADMIN) as r:
            listed = [s["sessionId"] for s in (await r.json())["items"]]
        assert sorted(listed) == sorted(ids)
        async with http.post(f"{b.url}{api}", json={"sessionId": ids[0]}, headers=ADMIN) as r:
            assert r.status == 409
        owners = {a.gateway.membership.owner(s) for s in ids}
        assert owners == {a.url, b.url}
        other = ids[3]  # owned by b: renewed through a (one hop), deleted through b
        async with http.post(f"{a.url}{api}/{other}/renew", json={"maxLifetime": "2h"}, headers=ADMIN) as r:
            assert r.status == 200 and (await r.json())["sessionId"] == other
        async with http.delete(f"{b.url}{api}/{other}", headers=ADMIN) as r:
            assert r.status == 200
        async with http.get(f"{a.url}{api}/{other}", headers=ADMIN) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "session_not_found"
