"""A Function instance for the trigger tests: logs each event it gets with its instance and session.

Run as ``python event_function.py``; listens on $PORT. Every POST appends one JSON line
``{"instance", "session", "id", "key"}`` to $EVENT_LOG and answers 200.
"""

from __future__ import annotations

import json
import os

from aiohttp import web

INSTANCE = os.environ.get("VOLTGRID_INSTANCE_ID", "?")
SESSION = os.environ.get("VOLTGRID_SESSION_ID", "?")
EVENT_LOG = os.environ["EVENT_LOG"]


async def event(request: web.Request) -> web.Response:
    await request.read()
    line = {
        "instance": INSTANCE,
        "session": SESSION,
        "id": request.headers.get("ce-id"),
        "key": request.headers.get("X-Voltgrid-Session"),
    }
    with open(EVENT_LOG, "a") as f:  # noqa: ASYNC230 (one short line per event)
        f.write(json.dumps(line) + "\n")
    return web.Response(text="ok")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/{tail:.*}", event)
    web.run_app(app, host="127.0.0.1", port=int(os.environ["PORT"]), print=None)
