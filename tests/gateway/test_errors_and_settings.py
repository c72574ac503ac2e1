"""Cold-start queue overflow (503), start failure (502), upstream timeout (504), tracing, settings."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest
from gwhelpers import FakeBackend, function

from voltgrid.api.function import Function
from voltgrid.backends.base import Instance
from voltgrid.gateway.settings import GatewaySettings, SettingsError, load_settings

HDR = "X-Voltgrid-Session"


class SlowBackend(FakeBackend):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.release = asyncio.Event()

    async def create(self, fn: Function, session_id: str, *, warm: bool = False) -> Instance:
        await self.release.wait()
        return await super().create(fn, session_id, warm=warm)


async def test_cold_start_queue_overflow_gets_503_then_queued_requests_proceed(
    replicas, upstream: str, http: aiohttp.ClientSession
) -> None:
    backend = SlowBackend(upstream)
    (gw,) = await replicas([function("f")], backend=backend, max_queue=2)
    url = f"{gw.url}/fn/default/f/x"
    queued = [asyncio.ensure_future(http.get(url, headers={HDR: f"s-{i}"})) for i in range(2)]
    await asyncio.sleep(0.2)
    async with http.get(url, headers={HDR: "s-9"}) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert (await r.json())["error"]["code"] == "queue_full"
    backend.release.set()
    for response in await asyncio.gather(*queued):
        assert response.status == 200
        response.release()


async def test_instance_that_cannot_start_gets_502(replicas, http: aiohttp.ClientSession) -> None:
    fn = function("broken")
    fn.spec.command = [sys.executable, "-c", "raise SystemExit(3)"]
    (gw,) = await replicas([fn])
    async with http.get(f"{gw.url}/fn/default/broken/x") as r:
        assert r.status == 502
        assert (await r.json())["error"]["code"] == "instance_start_failed"


async def test_slow_upstream_gets_504_and_traceparent_is_propagated(replicas, http: aiohttp.ClientSession) -> None:
    (gw,) = await replicas([function("echo")], upstream_timeout=0.5)
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with http.get(f"{gw.url}/fn/default/echo/whoami", headers={"traceparent": parent}) as r:
        seen = (await r.json())["headers"]
        sid = r.headers[HDR]
    assert seen["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert seen["X-Voltgrid-Session-Id"] == sid
    async with http.get(f"{gw.url}/fn/default/echo/slow?s=3", headers={HDR: sid}) as r:
        assert r.status == 504 and (await r.json())["error"]["code"] == "upstream_timeout"
    async with http.get(f"{gw.url}/_voltgrid/metrics") as r:
        text = await r.text()
    assert 'voltgrid_requests_total{code="200",function="default/echo"}' in text
    assert "voltgrid_session_held_seconds_total" in text and "voltgrid_cold_starts_total" in text


def test_settings_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    file = tmp_path / "gw.yaml"
    file.write_text("port: 9000\nmax-queue: 5\nupstream_timeout: 7\npeers: [http://a:1]\ninternal_token: t\n")
    env = {"VOLTGRID_GATEWAY_MAX_QUEUE": "6", "VOLTGRID_GATEWAY_PORT": "9100", "OTHER": "x"}
    s = load_settings(file, env, {"port": 9200, "upstream_timeout": None})
    assert (s.port, s.max_queue, s.upstream_timeout, s.peers) == (9200, 6, 7.0, ["http://a:1"])
    assert s.self_url == "http://127.0.0.1:9200"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope: 1\n", "unknown setting"),
        ("- a\n", "mapping"),
        ("peers: [http://a:1]\n", "internal_token"),
        ("max_queue: -1\n", "positive"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "gw.yaml"
    file.write_text(text)
    with pytest.raises(SettingsError, match=message):
        load_settings(file)


def test_env_values_are_checked() -> None:
    with pytest.raises(SettingsError, match="max_queue"):
        load_settings(env={"VOLTGRID_GATEWAY_MAX_QUEUE": "lots"})
    assert GatewaySettings().internal_token  # a single replica gets a random token
