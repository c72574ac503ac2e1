"""Several workers per gateway: each a ring member, so a session keeps its instance whichever worker
a connection lands on, the Session API agrees across workers, and a killed worker comes back.

The real command (``voltgrid gateway --workers 2``) with the local backend, reached over loopback
with a new connection per request (the kernel spreads connections over the workers).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from gwhelpers import ADMIN, ADMIN_TOKEN, function

from ports import free_port

PORT_GAP = 10


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    fn = function("echo")
    manifest = tmp_path / "echo.yaml"
    manifest.write_text(yaml.safe_dump(fn.model_dump(mode="json", by_alias=True, exclude_none=True)))
    port = free_port()
    base = free_port()
    command = [
        *(sys.executable, "-m", "voltgrid.cli.main", "gateway", "--backend", "local"),
        *("--functions", str(manifest), "--state-dir", str(tmp_path / "state")),
        *("--storage-dir", str(tmp_path / "storage"), "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "2", "--worker-port-base", str(base)),  # the internal token: generated, shared
        *("--api-tokens", ADMIN_TOKEN),
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def workers_of(pid: int) -> list[int]:
    """The supervisor's child processes (its workers)."""
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def get_json(url: str, **kwargs: object) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as r:  # type: ignore[arg-type]
        return r.status, await r.json(content_type=None)


async def wait_ready(base: str) -> None:
    async with asyncio.timeout(30):
        while True:
            try:
                status, _ = await get_json(f"{base}/_voltgrid/readyz")
                if status == 200:
                    return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


async def test_a_session_keeps_its_instance_whichever_worker_answers(two_workers) -> None:
    base, _ = two_workers
    await wait_ready(base)
    seen: dict[str, set[str]] = {}
    for _ in range(8):
        for sid in ("s-one", "s-two", "s-three", "s-four"):
            status, body = await get_json(f"{base}/fn/default/echo/whoami", headers={"X-Voltgrid-Session": sid})
            assert status == 200, body
            seen.setdefault(sid, set()).add(body["instance"])
    assert all(len(instances) == 1 for instances in seen.values()), seen
    assert len({i for s in seen.values() for i in s}) == 4


async def test_the_session_api_agrees_across_workers_and_a_killed_worker_comes_back(two_workers) -> None:
    base, proc = two_workers
    await wait_ready(base)
    api = f"{base}/_voltgrid/v1/functions/default/echo/sessions"
    async with aiohttp.ClientSession() as http, http.post(api, json={"sessionId": "s-api"}, headers=ADMIN) as r:
        assert r.status == 201, await r.text()
    for _ in range(6):  # new connections: both workers answer, the owner's record is the one
        status, body = await get_json(f"{api}/s-api", headers=ADMIN)
        assert status == 200 and body["sessionId"] == "s-api"
    children = workers_of(proc.pid)
    assert len(children) == 2
    os.kill(children[0], signal.SIGKILL)
    async with asyncio.timeout(20):
        while True:  # the supervisor starts it again; meanwhile the other worker serves
            now = workers_of(proc.pid)
            if len(now) == 2 and children[0] not in now:
                break
            await asyncio.sleep(0.2)
    await wait_ready(base)
    status, body = await get_json(f"{base}/fn/default/echo/whoami", headers={"X-Voltgrid-Session": "s-after"})
    assert status == 200
