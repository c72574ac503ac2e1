"""The files API over real HTTP: streamed bytes, confinement against `..` and symlinks, hostile bodies."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies

from conftest import TOKEN, Agent, StartAgent
from voltgrid.sandbox_agent.errors import AgentError
from voltgrid.sandbox_agent.workspace import split

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("path", "parts"),
    [("", []), ("/", []), ("a", ["a"]), ("/a/b/", ["a", "b"]), ("a//b", ["a", "b"]), ("a b/ü", ["a b", "ü"])],
)
def test_split_keeps_plain_components(path: str, parts: list[str]) -> None:
    assert split(path) == parts


@pytest.mark.parametrize(
    ("path", "status"),
    [("..", 403), ("a/../../etc", 403), ("./a", 403), ("a/.", 403), ("a\x00b", 400), ("a/" * 300, 400)],
)
def test_split_refuses_dot_segments_nul_and_absurd_depth(path: str, status: int) -> None:
    with pytest.raises(AgentError) as err:
        split(path)
    assert err.value.status == status


async def test_put_get_stat_list_mkdir_delete(agent: Agent) -> None:
    c = agent.client
    r = await c.put("/files/notes/today.txt", content=b"hello")
    assert r.status_code == 201 and r.json()["size"] == 5 and r.json()["type"] == "file"
    assert (agent.workspace / "notes" / "today.txt").read_bytes() == b"hello"
    r = await c.get("/files/notes/today.txt")
    assert r.content == b"hello" and r.headers["content-length"] == "5"
    assert (await c.post("/dirs/notes/deep/er")).json()["type"] == "dir"
    names = [(e["name"], e["type"]) for e in (await c.get("/dirs/notes")).json()]
    assert names == [("deep", "dir"), ("today.txt", "file")]
    assert [e["name"] for e in (await c.get("/dirs/")).json()] == ["notes"]
    assert (await c.get("/stat/notes/today.txt")).json()["path"] == "notes/today.txt"
    r = await c.delete("/files/notes")
    assert r.status_code == 409 and "recursive" in r.json()["error"]["message"]
    assert (await c.delete("/files/notes", params={"recursive": "true"})).status_code == 200
    assert (await c.get("/files/notes/today.txt")).status_code == 404
    assert not (agent.workspace / "notes").exists()


async def test_put_replaces_a_file_and_refuses_directories(agent: Agent) -> None:
    c = agent.client
    await c.put("/files/f", content=b"one")
    await c.put("/files/f", content=b"two")
    assert (agent.workspace / "f").read_bytes() == b"two"
    (agent.workspace / "d").mkdir()
    r = await c.put("/files/d", content=b"x")
    assert r.status_code == 409 and r.json()["error"]["code"] == "is_a_directory"
    assert (await c.get("/files/d")).json()["error"]["code"] == "not_a_file"
    assert sorted(os.listdir(agent.workspace)) == ["d", "f"]  # no temporary upload left behind


@pytest.mark.parametrize("raw", ["/files/a/%2e%2e/%2e%2e/etc/passwd", "/files/%2E%2E%2Fsecret", "/dirs/%2e%2e"])
async def test_encoded_dot_segments_are_refused(agent: Agent, raw: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
    head = f"GET {raw} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode())
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert answer.split()[1] in (b"403", b"404"), answer
    assert b"root:" not in answer


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the workspace holding a secret, and symlinks to it planted inside."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret").write_text("top secret")
    return out


async def test_symlinks_out_of_the_workspace_are_never_followed(agent: Agent, outside: Path) -> None:
    ws, c = agent.workspace, agent.client
    (ws / "link").symlink_to(outside)
    (ws / "file-link").symlink_to(outside / "secret")
    for path in ("link/secret", "file-link"):
        r = await c.get(f"/files/{path}")
        assert r.status_code == 403 and r.json()["error"]["code"] == "path_forbidden", path
        assert "secret" not in r.text.replace(path, "")
    assert (await c.get("/dirs/link")).status_code == 403
    assert (await c.put("/files/link/new", content=b"x")).status_code == 403
    assert (await c.post("/dirs/link/sub")).status_code == 403
    assert (await c.delete("/files/link/secret")).status_code == 403
    assert sorted(os.listdir(outside)) == ["secret"]
    # A symlink is stat-ed and listed as itself, and an upload replaces the link, not its target.
    assert (await c.get("/stat/file-link")).json()["type"] == "symlink"
    assert (await c.put("/files/file-link", content=b"mine")).status_code == 201
    assert (outside / "secret").read_text() == "top secret" and (ws / "file-link").read_bytes() == b"mine"
    # Deleting a tree removes the links inside it, never what they point to.
    (ws / "tree").mkdir()
    (ws / "tree" / "out").symlink_to(outside)
    assert (await c.delete("/files/tree", params={"recursive": "1"})).status_code == 200
    assert (outside / "secret").read_text() == "top secret"
    assert (await c.delete("/files/")).status_code == 403


async def test_a_200_mib_upload_and_download_stream_without_buffering(agent: Agent) -> None:
    block = os.urandom(MiB)
    size = 200 * MiB
    expected = hashlib.sha256(block * 200).hexdigest()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield block

    tracemalloc.start()
    try:
        r = await agent.client.put("/files/big.bin", content=body())
        assert r.status_code == 201 and r.json()["size"] == size
        upload_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        async with agent.client.stream("GET", "/files/big.bin") as resp:
            assert resp.headers["content-length"] == str(size)
            async for chunk in resp.aiter_raw():
                digest.update(chunk)
        download_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest.hexdigest() == expected
    # Both directions hold a few chunks at a time, not the file (client and server share this process).
    assert upload_peak < 40 * MiB and download_peak < 40 * MiB, (upload_peak // MiB, download_peak // MiB)


def _raw_upload(port: int, path: str, declared: int, sent: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    head = f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {declared}\r\n\r\n"
    s.sendall(head.encode() + sent)
    return s


async def test_an_abandoned_upload_leaves_nothing_behind(agent: Agent) -> None:
    s = await asyncio.to_thread(_raw_upload, agent.port, "/files/half.bin", 10 * MiB, b"x" * 1000)
    await asyncio.sleep(0.2)
    s.close()
    for _ in range(100):
        if not os.listdir(agent.workspace):
            break
        await asyncio.sleep(0.05)
    assert os.listdir(agent.workspace) == []


async def test_a_stalled_upload_gets_408(start_agent: StartAgent) -> None:
    agent: Agent = await start_agent(idle_timeout=0.5)
    s = await asyncio.to_thread(_raw_upload, agent.port, "/files/slow.bin", 100, b"x" * 10)
    try:
        answer = await asyncio.to_thread(s.recv, 4096)
    finally:
        s.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"body_timeout" in answer
    assert os.listdir(agent.workspace) == []


@settings(max_examples=300, deadline=None)
@given(strategies.lists(strategies.sampled_from(["a", "..", ".", "", "b c", "%2e", "\u00e9", "x" * 10]), max_size=12))
def test_split_never_yields_a_component_that_leaves_the_root(components: list[str]) -> None:
    path = "/".join(components)
    try:
        parts = split(path)
    except AgentError as err:
        assert err.status in (400, 403)
        assert ".." in components or "." in components
        return
    assert all(p not in ("", ".", "..") and "/" not in p for p in parts)
    root = "/ws"
    assert os.path.normpath(os.path.join(root, *parts)).startswith(root)
