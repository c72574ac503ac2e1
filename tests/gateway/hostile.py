"""A gateway in a thread for hostile-client tests, and raw-socket helpers.

The gateway (the production runner, so its connection limits apply) serves a fake backend whose
instances all point at an in-process upstream, so thousands of requests take seconds. Requests are
written as raw bytes: a client library would refuse to send most of them.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from gwhelpers import ADMIN_TOKEN, FakeBackend, function

from ports import free_port
from voltgrid.gateway.app import GatewayServer
from voltgrid.gateway.settings import GatewaySettings, JwtPolicy

SECRET = "s3cret-key-for-tests-only-0123456789"
MAX_BODY = 1024 * 1024
SECURED = JwtPolicy(issuer="tests", audience="voltgrid", keys=[SECRET], required_scope="invoke")


@dataclass
class HostileGateway:
    port: int
    backend: FakeBackend
    #: Requests (and WebSocket upgrades) that reached the upstream.
    upstream_hits: list[str] = field(default_factory=list)


@contextmanager
def threaded_gateway(**overrides: Any) -> Iterator[HostileGateway]:
    """A gateway on a free port, served by an event loop in a thread, with functions ``open``,
    ``secured`` (JWT with :data:`SECRET`) and ``mcp``."""
    port = free_port()
    ready = threading.Event()
    handles: list[Any] = []
    hits: list[str] = []
    backend_box: list[FakeBackend] = []

    async def serve() -> None:
        async def echo(request: web.Request) -> web.Response:
            hits.append(request.path)
            await request.read()
            return web.json_response({"ok": True, "headers": dict(request.headers)})

        upstream_app = web.Application(client_max_size=MAX_BODY * 4)
        upstream_app.router.add_route("*", "/{tail:.*}", echo)
        upstream = web.AppRunner(upstream_app)
        await upstream.setup()
        up_port = free_port()
        await web.TCPSite(upstream, "127.0.0.1", up_port).start()
        options: dict[str, Any] = {
            "port": port,
            "max_body_bytes": MAX_BODY,
            "upstream_timeout": 2,
            "jwt": {"default/secured": SECURED},
            "api_tokens": [ADMIN_TOKEN],
        }
        options.update(overrides)
        backend = FakeBackend(f"http://127.0.0.1:{up_port}")
        backend_box.append(backend)
        functions = [function("open"), function("secured"), function("mcp", affinity="MCP")]
        for fn in functions:  # every request without a session starts an instance: never run out
            fn.spec.scaling.max_instances = 10_000
        server = GatewayServer(GatewaySettings(**options), backend, functions)
        await server.start("127.0.0.1", port)
        done = asyncio.Event()
        handles.extend((asyncio.get_running_loop(), done))
        ready.set()
        await done.wait()
        await server.stop()
        await upstream.cleanup()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield HostileGateway(port, backend_box[0], hits)
    finally:
        handles[0].call_soon_threadsafe(handles[1].set)
        thread.join(10)


def read_status(s: socket.socket, timeout: float) -> int | None:
    """The status of the response on ``s``; None when the gateway closed it without one."""
    started = time.monotonic()
    response = b""
    while b"\r\n" not in response:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            break
        if not chunk:
            break
        response += chunk
        assert time.monotonic() - started < timeout, "no answer in time"
    if not response:
        return None
    assert response.startswith(b"HTTP/1."), response[:100]  # the parser answers bad framing in HTTP/1.0
    return int(response[9:12])


def raw(port: int, data: bytes, timeout: float = 5.0) -> int:
    """Send raw bytes, return the response status (fails the test on a hang or a silent close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        status = read_status(s, timeout)
    assert status is not None, "closed without an answer"
    return status


def request_bytes(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    """A request as bytes; ``Host: gw`` and ``Connection: close`` unless ``headers`` name them."""
    names = {name.lower() for name, _ in headers}
    lines = [f"{method} {path} HTTP/1.1".encode()]
    lines += [b"Host: gw"] if b"host" not in names else []
    lines += [b"Connection: close"] if b"connection" not in names else []
    lines += [name + b": " + value for name, value in headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    pairs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    return raw(port, request_bytes("GET", path, pairs))
