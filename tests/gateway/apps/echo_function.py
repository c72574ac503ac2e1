"""A function instance for gateway tests: identity, storage files, preStop log, streams, WebSocket.

Run as ``python echo_function.py``; listens on $PORT. Environment as the local backend sets it.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from aiohttp import web

STORAGE = Path(os.environ.get("VOLTGRID_STORAGE_DIR", "."))
INSTANCE = os.environ.get("VOLTGRID_INSTANCE_ID", "?")
SESSION = os.environ.get("VOLTGRID_SESSION_ID", "?")
PRESTOP_LOG = os.environ.get("PRESTOP_LOG")


async def whoami(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "instance": INSTANCE,
            "session": SESSION,
            "storage": str(STORAGE),
            "pid": os.getpid(),
            "path": request.path_qs,
            "headers": dict(request.headers),
        }
    )


async def write_file(request: web.Request) -> web.Response:
    (STORAGE / request.match_info["name"]).write_bytes(await request.read())
    return web.json_response({"written": request.match_info["name"]})


async def read_file(request: web.Request) -> web.Response:
    path = STORAGE / request.match_info["name"]
    if not path.exists():
        return web.json_response({"error": "missing"}, status=404)
    return web.Response(body=path.read_bytes())


async def prestop(request: web.Request) -> web.Response:
    body = await request.json()
    if PRESTOP_LOG:
        with open(PRESTOP_LOG, "a") as f:  # noqa: ASYNC230 (a tiny test log)
            f.write(json.dumps({"instance": INSTANCE, **body}) + "\n")
    (STORAGE / "memory.json").write_text(json.dumps({"saved_by": INSTANCE, **body}))
    return web.json_response({"ok": True})


async def sse(request: web.Request) -> web.StreamResponse:
    count = int(request.query.get("n", "5"))
    delay = float(request.query.get("delay", "0.2"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for i in range(count):
        await response.write(f"event: token\ndata: {i}\n\n".encode())
        await asyncio.sleep(delay)
    await response.write(b"event: done\ndata: end\n\n")
    return response


async def big(request: web.Request) -> web.StreamResponse:
    mib = int(request.query.get("mib", "1"))
    response = web.StreamResponse()
    response.content_length = mib * 1024 * 1024
    await response.prepare(request)
    chunk = b"x" * (1024 * 1024)
    for _ in range(mib):
        await response.write(chunk)
    return response


async def count(request: web.Request) -> web.Response:
    total = 0
    async for chunk in request.content.iter_any():
        total += len(chunk)
    return web.json_response({"received": total})


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "5")))
    return web.json_response({"slept": True})


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == web.WSMsgType.TEXT:
            await sock.send_str(f"echo:{msg.data}")
        elif msg.type == web.WSMsgType.BINARY:
            await sock.send_bytes(msg.data[::-1])
    return sock


def main() -> None:
    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/whoami", whoami)
    app.router.add_put("/files/{name}", write_file)
    app.router.add_get("/files/{name}", read_file)
    app.router.add_post("/prestop", prestop)
    app.router.add_get("/sse", sse)
    app.router.add_get("/big", big)
    app.router.add_post("/count", count)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", ws)
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None, access_log=None)


if __name__ == "__main__":
    main()
