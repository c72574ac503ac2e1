"""The Session API is private by default, clients see only their own sessions, ids are per Function."""

from __future__ import annotations

import time

import aiohttp
import jwt
from gwhelpers import ADMIN, FakeBackend, function

from voltgrid.gateway.settings import JwtPolicy

SECRET = "s3cret-key-for-tests-only-0123456789"
HDR = "X-Voltgrid-Session"
API = "/_voltgrid/v1/functions/default/{}/sessions"


def bearer(sub: str) -> dict[str, str]:
    token = jwt.encode({"iss": "tests", "sub": sub, "exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


async def test_the_session_api_of_an_open_function_needs_the_operator_token(
    replicas, upstream: str, http: aiohttp.ClientSession
) -> None:
    (gw,) = await replicas([function("open")], backend=FakeBackend(upstream))
    async with http.get(f"{gw.url}/fn/default/open/x") as r:  # invoking stays open
        sid = r.headers[HDR]
    api = gw.url + API.format("open")
    for method, path in [
        ("GET", ""),
        ("POST", ""),
        ("GET", f"/{sid}"),
        ("DELETE", f"/{sid}"),
        ("POST", f"/{sid}/renew"),
    ]:
        async with http.request(method, api + path) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
        async with http.request(method, api + path, headers={"Authorization": "Bearer guess"}) as r:
            assert r.status == 401, (method, path)
    async with http.get(api, headers=ADMIN) as r:
        assert [s["sessionId"] for s in (await r.json())["items"]] == [sid]
    async with http.delete(f"{api}/{sid}", headers=ADMIN) as r:
        assert r.status == 200


async def test_a_jwt_client_sees_uses_and_ends_only_its_own_sessions(
    replicas, upstream: str, http: aiohttp.ClientSession
) -> None:
    a, b = await replicas(
        [function("secured")], n=2, backend=FakeBackend(upstream), jwt={"default/secured": JwtPolicy(keys=[SECRET])}
    )
    alice, bob = bearer("alice"), bearer("bob")
    async with http.get(f"{a.url}/fn/default/secured/x", headers=alice) as r:
        assert r.status == 200
        minted = r.headers[HDR]
    api = API.format("secured")
    async with http.post(b.url + api, json={"sessionId": "alice-notes"}, headers=alice) as r:
        assert r.status == 201
    mine = sorted([minted, "alice-notes"])
    for gw in (a, b):
        async with http.get(gw.url + api, headers=alice) as r:
            assert sorted(s["sessionId"] for s in (await r.json())["items"]) == mine
        async with http.get(gw.url + api, headers=bob) as r:
            assert (await r.json())["items"] == []
        async with http.get(gw.url + api, headers=ADMIN) as r:
            assert sorted(s["sessionId"] for s in (await r.json())["items"]) == mine
        for sid in mine:
            for method in ("GET", "DELETE"):
                async with http.request(method, f"{gw.url}{api}/{sid}", headers=bob) as r:
                    assert r.status == 404 and (await r.json())["error"]["code"] == "session_not_found"
            async with http.get(f"{gw.url}/fn/default/secured/x", headers={**bob, HDR: sid}) as r:
                assert r.status == 404  # bob cannot call through alice's session
            async with http.get(f"{gw.url}/fn/default/secured/x", headers={**alice, HDR: sid}) as r:
                assert r.status == 200
    async with http.delete(f"{a.url}{api}/{minted}", headers=alice) as r:
        assert r.status == 200
    async with http.get(b.url + api, headers=alice) as r:
        assert [s["sessionId"] for s in (await r.json())["items"]] == ["alice-notes"]


async def test_session_ids_are_scoped_to_their_function(replicas, upstream: str, http: aiohttp.ClientSession) -> None:
    (gw,) = await replicas(
        [function("open"), function("secured")],
        backend=FakeBackend(upstream),
        jwt={"default/secured": JwtPolicy(keys=[SECRET])},
    )
    async with http.get(f"{gw.url}/fn/default/open/x", headers={HDR: "alice-42"}) as r:
        assert r.status == 200  # squatted on the open Function
    async with http.post(gw.url + API.format("secured"), json={"sessionId": "alice-42"}, headers=bearer("alice")) as r:
        assert r.status == 201, await r.text()
    async with http.get(f"{gw.url}/fn/default/secured/x", headers={**bearer("alice"), HDR: "alice-42"}) as r:
        assert r.status == 200
    async with http.get(gw.url + API.format("open"), headers=ADMIN) as r:
        assert [s["function"] for s in (await r.json())["items"]] == ["default/open"]


async def test_minting_sessions_is_rate_limited_per_client(
    replicas, upstream: str, http: aiohttp.ClientSession
) -> None:
    backend = FakeBackend(upstream)
    open_fn = function("open")
    open_fn.spec.scaling.max_instances = 100
    (gw,) = await replicas([open_fn, function("other")], backend=backend, session_mint_burst=5, session_mint_rate=0.01)
    statuses = []
    for _ in range(8):  # no session id: each would mint a session and start an instance
        async with http.get(f"{gw.url}/fn/default/open/x") as r:
            statuses.append(r.status)
            if r.status == 429:
                assert r.headers["Retry-After"] == "100"
                assert (await r.json())["error"]["code"] == "too_many_sessions"
    for i in range(5):  # made-up ids would start sessions too
        async with http.get(f"{gw.url}/fn/default/open/x", headers={HDR: f"made-up-{i}"}) as r:
            statuses.append(r.status)
    assert statuses == [200] * 5 + [429] * 8 and len(backend.created) == 5
    sid = (await _sessions(http, gw.url, "open"))[0]
    async with http.get(f"{gw.url}/fn/default/open/x", headers={HDR: sid}) as r:
        assert r.status == 200  # an existing session is never limited
    async with http.get(f"{gw.url}/fn/default/other/x") as r:
        assert r.status == 200  # nor is another Function
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as other, other.get(f"{gw.url}/fn/default/open/x") as r:
        assert r.status == 200  # nor another client


async def _sessions(http: aiohttp.ClientSession, url: str, name: str) -> list[str]:
    async with http.get(url + API.format(name), headers=ADMIN) as r:
        return [s["sessionId"] for s in (await r.json())["items"]]
