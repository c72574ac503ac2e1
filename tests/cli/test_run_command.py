"""`voltgrid run`: which cluster it may touch, what it installs, what it reports, and its relay."""

from __future__ import annotations

import asyncio

import pytest

from voltgrid.cli import main as cli
from voltgrid.cli.run import (
    CONFIRM_FLAG,
    Target,
    chart_values,
    component_changes,
    host_volume,
    named_cluster,
    relay,
)
from voltgrid.errors import ClusterError


@pytest.mark.parametrize(
    ("flag", "env", "confirmed", "expected"),
    [
        (None, {}, False, None),  # the local cluster, whatever ~/.kube/config or $KUBECONFIG say
        (None, {"KUBECONFIG": "/home/me/.kube/prod"}, False, None),
        ("/k/c", {}, True, "/k/c"),
        (None, {"VOLTGRID_KUBECONFIG": "/k/env"}, True, "/k/env"),
        ("/k/flag", {"VOLTGRID_KUBECONFIG": "/k/env"}, True, "/k/flag"),
    ],
)
def test_only_a_named_and_confirmed_cluster_is_used(
    flag: str | None, env: dict[str, str], confirmed: bool, expected: str | None
) -> None:
    assert named_cluster(flag, env, confirmed) == expected


@pytest.mark.parametrize(("flag", "env"), [("/k/c", {}), (None, {"VOLTGRID_KUBECONFIG": "/k/env"})])
def test_a_named_cluster_without_confirmation_is_refused(flag: str | None, env: dict[str, str]) -> None:
    with pytest.raises(ClusterError, match=f"names a cluster other than the local one.*Add {CONFIRM_FLAG}"):
        named_cluster(flag, env, False)


def test_the_command_exits_2_before_touching_an_unconfirmed_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--kubeconfig", "/nonexistent/prod"]) == 2
    assert f"Add {CONFIRM_FLAG}" in capsys.readouterr().err


def test_chart_values() -> None:
    local = chart_values(Target("/k", local=True), 8080)
    assert local["gateway.replicas"] == "2" and local["image.pullPolicy"] == "Never"
    assert local["operator.urlBase"] == "http://127.0.0.1:8080"
    assert "image.repository" not in chart_values(Target("/k", local=False), 9000)


def test_host_volume_is_bound_to_its_claim() -> None:
    pv = host_volume("v", "default", "sessions", __import__("pathlib").Path("/x"))
    assert pv["spec"]["claimRef"] == {"namespace": "default", "name": "sessions"}
    assert pv["spec"]["accessModes"] == ["ReadWriteMany"] and pv["spec"]["hostPath"]["path"] == "/x"


def test_component_changes_are_reported() -> None:
    before = {"gw-a": (True, 0), "gw-b": (True, 0), "op": (True, 1)}
    after = {"gw-a": (False, 1), "op": (True, 1), "gw-c": (False, 0)}
    lines = component_changes(before, after)
    assert any(line.startswith("gw-a restarted (1 restarts)") for line in lines)
    assert any(line.startswith("gw-a is not ready") for line in lines)
    assert "gw-b is gone (replaced)" in lines
    assert not [line for line in lines if line.startswith(("op", "gw-c"))]  # unchanged; new and starting
    assert component_changes(after, {**after, "gw-a": (True, 1)}) == ["gw-a is ready again"]


async def test_relay_carries_bytes_both_ways() -> None:
    async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await reader.read(100)).upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    upstream = await asyncio.start_server(upper, "127.0.0.1", 0)
    front = await relay("127.0.0.1", 0, upstream.sockets[0].getsockname()[:2])
    try:
        reader, writer = await asyncio.open_connection(*front.sockets[0].getsockname()[:2])
        writer.write(b"hello")
        await writer.drain()
        assert await reader.read() == b"HELLO"
        writer.close()
        await writer.wait_closed()
    finally:
        front.close()
        upstream.close()
        await front.wait_closed()
        await upstream.wait_closed()


async def test_relay_closes_when_the_upstream_is_down() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead = probe.sockets[0].getsockname()[:2]
    probe.close()
    await probe.wait_closed()
    front = await relay("127.0.0.1", 0, dead)
    try:
        reader, writer = await asyncio.open_connection(*front.sockets[0].getsockname()[:2])
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
    finally:
        front.close()
        await front.wait_closed()
