"""Two replicas, one authoritative record per session, and one instance budget per Function.

Which replica owns an MCP id is decided by hashing an id the instance mints, so the tests bias the
ring (:func:`_mcp_ids_owned_by`): learned MCP ids go to one chosen replica, everything else hashes as
usual. The ``initialize`` is sent to the other replica, so the non-owner case (the one that left an
active copy behind) happens every time, not about half of the time.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Callable

import aiohttp
import httpx2
import pytest
from aiohttp import web
from gwhelpers import ADMIN, FakeBackend, Replica, function, serving
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from test_mcp import RoundRobin

from voltgrid.registry import ownership

API = "/_voltgrid/v1/functions/default/{name}/sessions"
HDR = "X-Voltgrid-Session"
MCP_ID = re.compile(r"[0-9a-f]{32}")


def _mcp_ids_owned_by(monkeypatch: pytest.MonkeyPatch, prefer: Callable[[str], list[str]]) -> None:
    """Learned MCP ids (32 hex digits) are ranked by ``prefer(id)`` (owner first, then its runner-up,
    ... among the live members); other keys hash as usual."""
    real = ownership.score

    def score(key: str, member: str) -> int:
        if MCP_ID.fullmatch(key):
            order = prefer(key)
            return len(order) - order.index(member) if member in order else 0
        return real(key, member)

    monkeypatch.setattr(ownership, "score", score)


def _port(replica: Replica) -> int:
    return int(replica.url.rsplit(":", 1)[1])


async def _rows(http: aiohttp.ClientSession, replica: Replica, name: str) -> list[str]:
    async with http.get(replica.url + API.format(name=name), headers=ADMIN) as r:
        assert r.status == 200, await r.text()
        return [item["sessionId"] for item in (await r.json())["items"]]


async def _eventually(check: Callable[[], object], limit: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await _maybe_await(check()):
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def _maybe_await(value: object) -> object:
    return await value if asyncio.iscoroutine(value) else value


async def test_a_non_owner_initialize_leaves_one_authoritative_record(replicas, monkeypatch) -> None:
    fn = function("tools", "mcp_function.py", affinity="MCP", idleTimeout="1s")
    a, b = await replicas([fn], n=2)
    _mcp_ids_owned_by(monkeypatch, lambda _: [b.url, a.url])
    client = httpx2.AsyncClient(transport=RoundRobin([_port(a), _port(b)]), timeout=httpx2.Timeout(30, read=300))
    async with aiohttp.ClientSession() as http:
        async with (
            client,
            streamable_http_client(f"{a.url}/fn/default/tools/mcp", http_client=client) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()  # the first request: to A, which does not own the minted id
            (key,) = [r.key for shard in b.gateway.manager.registry.shards() for r in shard.values()]
            assert a.gateway.manager.registry.find("default/tools", key) is None  # A keeps a passive copy only
            await _eventually(lambda: [c.key for c in a.gateway.manager.backups.values()] == [key])  # from B
            instances = set()
            for _ in range(10):  # 3 s of calls, past the 1 s idleTimeout, alternating replicas
                result = await session.call_tool("whoami", {})
                assert not result.is_error
                instances.add(result.structured_content["instance"])
                await asyncio.sleep(0.3)
            assert len(instances) == 1
            assert await _rows(http, a, "tools") == [key] == await _rows(http, b, "tools")
        # the SDK's DELETE ended the session on its owner, and the backup went with it
        await _eventually(lambda: not a.gateway.manager.backups and not len(b.gateway.manager.registry))
        assert await _rows(http, a, "tools") == [] == await _rows(http, b, "tools")
        await _eventually(_no_instances(a, "default/tools"))


def _no_rows(http: aiohttp.ClientSession, a: Replica, b: Replica, name: str) -> Callable[[], object]:
    async def check() -> bool:
        return await _rows(http, a, name) == [] == await _rows(http, b, name)

    return check


def _no_instances(replica: Replica, function_key: str) -> Callable[[], object]:
    async def check() -> bool:
        return await replica.backend.list(function=function_key) == []

    return check


async def _one_call(url: str, ports: list[int]) -> str:
    client = httpx2.AsyncClient(transport=RoundRobin(ports), timeout=httpx2.Timeout(30, read=300))
    async with (
        client,
        streamable_http_client(url, http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        result = await session.call_tool("whoami", {})
        return str(result.structured_content["instance"])


async def test_create_and_delete_rounds_never_drift_below_max_instances(replicas, monkeypatch) -> None:
    fn = function("tools", "mcp_function.py", affinity="MCP")
    fn.spec.scaling.max_instances = 3
    a, b = await replicas([fn], n=2)
    _mcp_ids_owned_by(monkeypatch, lambda _: [b.url, a.url])
    url, ports = f"{a.url}/fn/default/tools/mcp", [_port(a), _port(b)]
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            served = await asyncio.gather(*(_one_call(url, ports) for _ in range(3)))
            assert len(set(served)) == 3  # every round gets its three instances
            await _eventually(_no_instances(a, "default/tools"))
            await _eventually(_no_rows(http, a, b, "tools"))
            assert [gw.gateway.manager.budget.count("default/tools") for gw in (a, b)] == [0, 0]


@pytest.fixture
async def slow_backend(upstream: str) -> AsyncIterator[FakeBackend]:
    """A fake backend whose instances take 0.2 s to start, so a burst overlaps its cold starts."""
    yield FakeBackend(upstream, start_delay=0.2)


async def _burst(http: aiohttp.ClientSession, targets: list[Replica], n: int) -> list[aiohttp.ClientResponse]:
    async def one(i: int) -> aiohttp.ClientResponse:
        async with http.get(f"{targets[i % len(targets)].url}/fn/default/echo/whoami") as r:
            await r.read()
            return r

    return await asyncio.gather(*(one(i) for i in range(n)))


async def test_a_burst_never_starts_more_than_max_instances(replicas, slow_backend: FakeBackend) -> None:
    fn = function("echo")
    fn.spec.scaling.max_instances = 3
    a, b = await replicas([fn], n=2, backend=slow_backend)
    async with aiohttp.ClientSession() as http:
        answers = await _burst(http, [a, b], 10)
    assert len(slow_backend.created) == 3
    assert sorted(r.status for r in answers) == [200] * 3 + [503] * 7
    assert all(r.headers["Retry-After"] == "1" for r in answers if r.status == 503)


async def test_a_burst_packs_sessions_per_instance(replicas, slow_backend: FakeBackend) -> None:
    fn = function("echo", sessionsPerInstance=5)
    a, b = await replicas([fn], n=2, backend=slow_backend)
    async with aiohttp.ClientSession() as http:
        answers = await _burst(http, [a, b], 20)
    assert [r.status for r in answers] == [200] * 20
    assert len(slow_backend.created) == 4


async def test_a_burst_of_mcp_initializes_holds_the_budget_and_packs(replicas, monkeypatch, mcp_upstream: str) -> None:
    backend = FakeBackend(mcp_upstream, start_delay=0.2)
    capped, packed = function("capped", affinity="MCP"), function("packed", affinity="MCP", sessionsPerInstance=5)
    capped.spec.scaling.max_instances = 3
    a, b = await replicas([capped, packed], n=2, backend=backend)
    _mcp_ids_owned_by(monkeypatch, lambda key: [(a.url, b.url)[int(key, 16) % 2], (b.url, a.url)[int(key, 16) % 2]])

    async def initialize(http: aiohttp.ClientSession, i: int, name: str) -> int:
        async with http.post(f"{(a, b)[i % 2].url}/fn/default/{name}/mcp", json={"method": "initialize"}) as r:
            return r.status

    async with aiohttp.ClientSession() as http:
        capped_answers = await asyncio.gather(*(initialize(http, i, "capped") for i in range(10)))
        packed_answers = await asyncio.gather(*(initialize(http, i, "packed") for i in range(20)))
    assert sorted(capped_answers) == [200] * 3 + [503] * 7
    assert packed_answers == [200] * 20
    by_function = [i.function for i in backend.created]
    assert (by_function.count("default/capped"), by_function.count("default/packed")) == (3, 4)


@pytest.fixture
async def mcp_upstream() -> AsyncIterator[str]:
    """A minimal Streamable HTTP server: a POST without a session mints ids 1, 2, 3... (32 hex)."""
    minted = itertools.count(1)

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        session = request.headers.get("Mcp-Session-Id")
        if session is None and request.method == "POST":
            headers = {"Mcp-Session-Id": f"{next(minted):032x}"}
            return web.json_response({"jsonrpc": "2.0", "id": 1, "result": {}}, headers=headers)
        return web.json_response({"jsonrpc": "2.0", "id": 2, "result": {"session": session}})

    async with serving(handler) as url:
        yield url


async def test_a_shared_instance_is_released_after_all_its_sessions_are_deleted(
    replicas, monkeypatch, mcp_upstream: str
) -> None:
    backend = FakeBackend(mcp_upstream)
    fn = function("tools", affinity="MCP", sessionsPerInstance=5)
    a, b = await replicas([fn], n=2, backend=backend)
    _mcp_ids_owned_by(monkeypatch, lambda key: [(a.url, b.url)[int(key, 16) % 2], (b.url, a.url)[int(key, 16) % 2]])
    mcp = "/fn/default/tools/mcp"
    async with aiohttp.ClientSession() as http:
        keys = []
        for _ in range(5):  # every initialize on A: it owns ids 2 and 4, B owns 1, 3 and 5
            async with http.post(a.url + mcp, json={"method": "initialize"}) as r:
                assert r.status == 200
                keys.append(r.headers["Mcp-Session-Id"])
        assert len(backend.created) == 1  # packed
        assert sorted(await _rows(http, a, "tools")) == sorted(keys) == sorted(await _rows(http, b, "tools"))
        for i, key in enumerate(keys):  # each DELETE to the other replica than the last
            async with http.delete((a, b)[i % 2].url + mcp, headers={"Mcp-Session-Id": key}) as r:
                assert r.status == 200
        await _eventually(lambda: backend.deleted == [backend.created[0].id])
        await _eventually(_no_rows(http, a, b, "tools"))
        assert not a.gateway.manager.backups and not b.gateway.manager.backups


async def test_a_legacy_sse_session_ends_when_its_client_closes_the_stream(replicas, monkeypatch) -> None:
    fn = function("legacy", "mcp_function.py", env={"MCP_TRANSPORT": "sse"}, affinity="MCP", idleTimeout="10m")
    a, b = await replicas([fn], n=2)
    _mcp_ids_owned_by(monkeypatch, lambda _: [b.url, a.url])  # the stream is held on A, the session owned by B
    async with sse_client(f"{a.url}/fn/default/legacy/sse") as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        assert not (await session.call_tool("whoami", {})).is_error
        assert len(await a.backend.list(function="default/legacy")) == 1
    loop = asyncio.get_running_loop()
    closed = loop.time()
    await _eventually(_no_instances(a, "default/legacy"), limit=5)
    assert loop.time() - closed < 5  # released at once, not after the 10 min idleTimeout
    await _eventually(lambda: len(b.gateway.manager.registry) == 0 == len(a.gateway.manager.registry))
    await _eventually(lambda: not a.gateway.manager.backups)


def _holders(replicas: list[Replica], key: str) -> tuple[list[str], list[str]]:
    """Which replicas hold ``key``'s record, and which hold a backup copy of it."""
    records = [r.url for r in replicas if r.gateway.manager.registry.find("default/tools", key) is not None]
    backups = [r.url for r in replicas if any(c.key == key for c in r.gateway.manager.backups.values())]
    return records, backups


async def test_ownership_moves_by_hand_off_when_replicas_join_and_leave(
    replicas, monkeypatch, mcp_upstream: str
) -> None:
    backend = FakeBackend(mcp_upstream)
    a, b, c = await replicas([function("tools", affinity="MCP")], n=3, backend=backend)
    gateways = [a, b, c]
    orders = ([a.url, b.url, c.url], [b.url, a.url, c.url], [c.url, a.url, b.url])
    _mcp_ids_owned_by(monkeypatch, lambda key: orders[int(key, 16) % 3])
    for gw in (a, b):
        gw.gateway.membership.set_members([a.url, b.url])  # C has not joined yet
    c.gateway.membership.set_members([c.url])
    mcp = "/fn/default/tools/mcp"
    async with aiohttp.ClientSession() as http:
        keys = []
        for i in range(6):
            async with http.post((a, b)[i % 2].url + mcp, json={"method": "initialize"}) as r:
                keys.append(r.headers["Mcp-Session-Id"])
        # ids 1..6 % 3: C would own 2 and 5, but without C, A owns them; B owns ids % 3 == 1, A the rest
        for key in keys:
            owner = b.url if int(key, 16) % 3 == 1 else a.url
            await _eventually(lambda k=key, o=owner: _holders(gateways, k) == ([o], [({a.url, b.url} - {o}).pop()]))

        for gw in gateways:  # C joins
            gw.gateway.membership.set_members([a.url, b.url, c.url])
        for key in keys:
            owner = (a.url, b.url, c.url)[int(key, 16) % 3]
            await _eventually(lambda k=key, o=owner: _holders(gateways, k)[0] == [o])
        listed = await _rows(http, a, "tools")
        assert sorted(listed) == sorted(keys)  # each exactly once
        for i, key in enumerate(keys):  # and every session still answers, through any replica
            async with http.post(gateways[i % 3].url + mcp, headers={"Mcp-Session-Id": key}, json={}) as r:
                assert r.status == 200 and (await r.json())["result"]["session"] == key

        await c.kill()  # C leaves: its sessions are promoted from the backups on their runner-ups
        for gw in (a, b):
            gw.gateway.membership.set_members([a.url, b.url])
        for key in keys:
            owner = b.url if int(key, 16) % 3 == 1 else a.url
            await _eventually(lambda k=key, o=owner: _holders([a, b], k)[0] == [o])
            async with http.post(a.url + mcp, headers={"Mcp-Session-Id": key}, json={}) as r:
                assert r.status == 200, await r.text()
        assert sorted(await _rows(http, b, "tools")) == sorted(keys)
        assert len(backend.created) == 6 and backend.deleted == []  # nothing restarted, nothing lost
