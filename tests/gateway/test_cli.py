"""``voltgrid sessions`` against a live gateway, and ``voltgrid dev`` as a real process."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from gwhelpers import free_port, function

from voltgrid.cli import dev, sessions


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(required=True)
    sessions.add_parser(sub)
    dev.add_parser(sub)
    return parser.parse_args(list(argv))


async def test_sessions_cli_round_trip(replicas, capsys: pytest.CaptureFixture[str]) -> None:
    (gw,) = await replicas([function("echo")])
    base = ["sessions", "--gateway", gw.url, "-f", "default/echo"]
    assert await asyncio.to_thread(sessions.run, parse(*base, "create", "my-agent", "--idle-timeout", "5m")) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["sessionId"] == "my-agent" and created["idleTimeoutSeconds"] == 300
    assert await asyncio.to_thread(sessions.run, parse(*base, "list")) == 0
    assert [s["sessionId"] for s in json.loads(capsys.readouterr().out)["items"]] == ["my-agent"]
    assert await asyncio.to_thread(sessions.run, parse(*base, "renew", "my-agent")) == 0
    assert await asyncio.to_thread(sessions.run, parse(*base, "delete", "my-agent")) == 0
    capsys.readouterr()
    assert await asyncio.to_thread(sessions.run, parse(*base, "get", "my-agent")) == 1
    assert "session_not_found" in capsys.readouterr().err


async def test_dev_serves_a_function_yaml_with_a_loud_warning(tmp_path: Path) -> None:
    fn = function("hello")
    path = tmp_path / "fn.yaml"
    path.write_text(yaml.safe_dump(fn.to_wire()))
    port = free_port()
    code = (
        "import argparse, sys; from voltgrid.cli import dev; p = argparse.ArgumentParser(); "
        "dev.add_parser(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "dev",
        str(path),
        "--port",
        str(port),
        "--state-dir",
        str(tmp_path / "state"),
        "--storage-dir",
        str(tmp_path / "storage"),
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    try:
        banner = b""
        while b"NOT ISOLATED" not in banner:
            banner += await asyncio.wait_for(proc.stderr.readline(), 10)
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/whoami") as r:
                        body = await r.json()
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.1)
        assert body["storage"].startswith(str(tmp_path / "storage" / "default" / "hello"))
    finally:
        proc.terminate()
        await proc.communicate()
    assert list((tmp_path / "state" / "instances").glob("*.json")) == []  # instances stopped with it
