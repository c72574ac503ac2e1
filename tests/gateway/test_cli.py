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
from aiohttp import web
from gwhelpers import ADMIN_TOKEN, function, serving

from ports import free_port
from voltgrid.cli import dev, gateway, sessions
from voltgrid.gateway.settings import FILE_ONLY, GatewaySettings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(required=True)
    sessions.add_parser(sub)
    dev.add_parser(sub)
    return parser.parse_args(list(argv))


async def test_sessions_cli_round_trip(replicas, capsys: pytest.CaptureFixture[str]) -> None:
    (gw,) = await replicas([function("echo")])
    base = ["sessions", "--gateway", gw.url, "--token", ADMIN_TOKEN, "-f", "default/echo"]
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


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:8080", "ftp://gw:21"])
def test_sessions_cli_refuses_a_gateway_that_is_not_a_url(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("sessions", "--gateway", url, "-f", "default/echo", "list")
    assert exited.value.code == 2
    assert "is not a gateway URL: expected http(s)://HOST[:PORT]" in capsys.readouterr().err


async def test_sessions_cli_names_an_answer_that_is_not_json(capsys: pytest.CaptureFixture[str]) -> None:
    """Pointed at some other HTTP server: one line saying so, not a JSON traceback."""

    async def page(_: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>")

    async with serving(page) as url:
        args = parse("sessions", "--gateway", f"{url}/", "-f", "default/echo", "list")
        assert await asyncio.to_thread(sessions.run, args) == 1
    assert "answered with something not JSON: is it a Voltgrid gateway?" in capsys.readouterr().err


def test_sessions_cli_keeps_a_session_id_one_path_segment() -> None:
    method, path, _ = sessions.request(parse("sessions", "-f", "team/echo", "get", "a/../../b?x=1"))
    assert (method, path) == ("GET", "/_voltgrid/v1/functions/team/echo/sessions/a%2F..%2F..%2Fb%3Fx%3D1")


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


def test_gateway_help_and_the_operations_guide_list_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="voltgrid")
    gateway.add_parser(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["gateway", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    guide = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    for name in GatewaySettings.model_fields:
        assert f"`{name}`" in guide, name
        if name in FILE_ONLY:
            assert name in text, name
            continue
        flag, env = "--" + name.replace("_", "-"), f"VOLTGRID_GATEWAY_{name.upper()}"
        assert flag in text and env in text, name
    assert "--peers" in text and "--replica-url" in text and "--internal-token" in text
    assert "[env VOLTGRID_GATEWAY_HEADER_READ_TIMEOUT; default 15.0]" in text


def test_gateway_flags_reach_the_settings(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="voltgrid")
    gateway.add_parser(parser.add_subparsers())
    args = parser.parse_args(["gateway", "--body-idle-timeout", "7", "--trusted-proxies", "10.0.0.0/8"])
    assert args.setting_body_idle_timeout == "7" and args.setting_trusted_proxies == "10.0.0.0/8"
