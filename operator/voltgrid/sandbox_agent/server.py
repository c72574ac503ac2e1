"""The agent's HTTP API: execution, contexts, commands and files, each call authorised by the token.

Routes (JSON in, JSON or NDJSON out; errors ``{"error": {"code", "message"}}``):

==========================================  ===================================================
``GET /health``                             liveness for the kubelet; the only call without a token
``POST /claim``                             ``{claim}`` signed by the gateway: once, when claimed
``POST /execute``                           ``{code, language?, contextId?, timeout?}`` → NDJSON events
``POST /contexts`` / ``GET /contexts``      create ``{language, cwd?}`` / list
``POST /contexts/{id}/restart|interrupt``   restart the kernel / interrupt what it runs
``DELETE /contexts/{id}``                   stop the kernel or shell
``POST /commands`` / ``GET /commands``      run ``{cmd, cwd?, env?, timeout?}`` → NDJSON / list
``POST /commands/{id}/stdin|signal``        raw bytes (``?close=true`` sends EOF) / ``{signal}``
``PUT|GET|DELETE /files/{path}``            upload or download raw bytes (streamed) / delete
``GET /stat/{path}``, ``GET|POST /dirs/{path}``  stat / list or make a directory
==========================================  ===================================================

The token arrives as ``Authorization: Bearer …`` and is compared in constant time; it is removed
from the environment the executed code and commands see, so code cannot echo it back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from voltgrid.sandbox_agent.agent import Agent, AgentSettings, child_env
from voltgrid.sandbox_agent.errors import AgentError, bad_request
from voltgrid.sandbox_agent.events import Event

logger = logging.getLogger(__name__)

MAX_JSON_BYTES: Final = 4 * 1024 * 1024
FILE_CHUNK: Final = 1024 * 1024
NDJSON: Final = "application/x-ndjson"


AGENT: Final = web.AppKey("voltgrid.sandbox_agent", Agent)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except AgentError as e:
        logger.info("refused %s %s: %s %s", request.method, request.path, e.status, e.message)
        return _error(e.status, e.code, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return _error(e.status, e.reason.lower().replace(" ", "_"), e.text or e.reason)
    except Exception:
        logger.exception("unexpected error handling %s %s", request.method, request.path)
        return _error(500, "internal", "the sandbox agent failed unexpectedly; this is a bug")


def _error(status: int, code: str, message: str) -> web.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/health" or (request.path == "/claim" and request.method == "POST"):
        return await handler(request)  # a claim is its own credential: the gateway's signature
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    agent = request.app[AGENT]
    given = given.strip() if scheme.lower() == "bearer" else ""
    if not agent.authorised(given):
        raise AgentError(401, "unauthorized", "a valid 'Authorization: Bearer <sandbox token>' header is required")
    return await handler(request)


async def _json(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise AgentError(413, "body_too_large", f"a JSON body may have at most {MAX_JSON_BYTES} bytes")
    raw = await request.content.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise AgentError(413, "body_too_large", f"a JSON body may have at most {MAX_JSON_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def _field(body: Mapping[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """``body[name]`` checked to be a ``kind`` (a JSON ``true`` is no number); ``default`` when absent."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise bad_request(f"{name!r} must be a {_JSON_NAMES.get(kind, kind.__name__)}")
    return value


_JSON_NAMES: Final = {str: "string", dict: "object", list: "list", bool: "boolean"}


async def _stream(request: web.Request, events: AsyncGenerator[Event, None]) -> web.StreamResponse:
    """NDJSON, one event a line, flushed as each happens; errors before the first event stay 4xx."""
    async with aclosing(events) as it:
        first = await anext(it)
        response = web.StreamResponse(headers={"Content-Type": NDJSON, "Cache-Control": "no-store"})
        await response.prepare(request)
        await response.write(json.dumps(first).encode() + b"\n")
        async for event in it:
            await response.write(json.dumps(event).encode() + b"\n")
        await response.write_eof()
        return response


async def health(request: web.Request) -> web.Response:
    """Served once the prewarmed contexts run (the app starts serving after them): readiness too."""
    return web.json_response({"status": "ok", "claimed": request.app[AGENT].claimed})


async def claim(request: web.Request) -> web.Response:
    signed = _field(await _json(request), "claim", str)
    if signed is None:
        raise bad_request("'claim' is required")
    await request.app[AGENT].claim(signed)
    return web.json_response({"claimed": True})


async def execute(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    body = await _json(request)
    code = _field(body, "code", str)
    if code is None:
        raise bad_request("'code' is required")
    language = _field(body, "language", str)
    context_id = _field(body, "contextId", str)
    timeout = agent.timeout(body)
    if context_id is not None:
        slot = agent.slot(context_id)
        if language is not None and language != slot.context.language:
            raise bad_request(f"context {context_id} runs {slot.context.language}, not {language}")
    else:
        slot = await agent.default(language or "python")
    try:
        async with asyncio.timeout(timeout):
            await slot.lock.acquire()
    except TimeoutError:
        raise AgentError(409, "context_busy", f"context {slot.id} stayed busy for the whole timeout") from None
    try:
        return await _stream(request, slot.context.execute(code, timeout))
    finally:
        slot.lock.release()


async def create_context(request: web.Request) -> web.Response:
    body = await _json(request)
    language = _field(body, "language", str, "python")
    slot = await request.app[AGENT].create(language, _field(body, "cwd", str, ""))
    return web.json_response(slot.describe(), status=201)


async def list_contexts(request: web.Request) -> web.Response:
    return web.json_response([s.describe() for s in request.app[AGENT].contexts.values()])


async def context_action(request: web.Request) -> web.Response:
    slot = request.app[AGENT].slot(request.match_info["id"])
    if request.match_info["action"] == "interrupt":
        await slot.context.interrupt()
    else:
        async with slot.lock:
            await slot.context.restart()
    return web.json_response(slot.describe())


async def delete_context(request: web.Request) -> web.Response:
    await request.app[AGENT].delete(request.match_info["id"])
    return web.json_response({}, status=200)


async def run_command(request: web.Request) -> web.StreamResponse:
    agent = request.app[AGENT]
    body = await _json(request)
    cmd = body.get("cmd")
    if isinstance(cmd, str) and cmd:
        argv = ["bash", "-c", cmd]
    elif isinstance(cmd, list) and cmd and all(isinstance(a, str) for a in cmd):
        argv = cmd
    else:
        raise bad_request("'cmd' must be a shell command string or a non-empty list of strings (argv)")
    env = _field(body, "env", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise bad_request("'env' must map names to strings")
    cwd = agent.directory(_field(body, "cwd", str, ""))
    return await _stream(request, agent.commands.run(argv, cwd, {**agent.env, **env}, agent.timeout(body)))


async def list_commands(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT].commands.describe())


async def command_stdin(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    command = agent.commands.get(request.match_info["id"])
    close = request.query.get("close", "false").lower() in ("1", "true", "yes")
    written = await command.write_stdin(_body_chunks(request, agent.settings.idle_timeout), close)
    return web.json_response({"written": written, "closed": close})


async def command_signal(request: web.Request) -> web.Response:
    command = request.app[AGENT].commands.get(request.match_info["id"])
    name = _field(await _json(request), "signal", str)
    if name is None:
        raise bad_request("'signal' is required, e.g. 'SIGTERM'")
    command.signal(name)
    return web.json_response(command.describe())


async def _body_chunks(request: web.Request, idle: float) -> AsyncIterator[bytes]:
    while True:
        try:
            chunk = await asyncio.wait_for(request.content.readany(), idle)
        except TimeoutError:
            raise AgentError(408, "body_timeout", f"the request body sent nothing for {idle:g} s") from None
        if not chunk:
            return
        yield chunk


async def put_file(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    upload = agent.workspace.open_write(request.match_info["path"])
    try:
        async for chunk in _body_chunks(request, agent.settings.idle_timeout):
            await asyncio.to_thread(upload.write, chunk)
        upload.commit()
    finally:
        upload.abort()
    return web.json_response(agent.workspace.stat(request.match_info["path"]), status=201)


async def get_file(request: web.Request) -> web.StreamResponse:
    fd, size = request.app[AGENT].workspace.open_read(request.match_info["path"])
    try:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        while chunk := await asyncio.to_thread(os.read, fd, FILE_CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        os.close(fd)


async def delete_file(request: web.Request) -> web.Response:
    recursive = request.query.get("recursive", "false").lower() in ("1", "true", "yes")
    request.app[AGENT].workspace.delete(request.match_info["path"], recursive=recursive)
    return web.json_response({})


async def stat_path(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT].workspace.stat(request.match_info["path"]))


async def list_dir(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT].workspace.listdir(request.match_info["path"]))


async def make_dir(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT].workspace.mkdir(request.match_info["path"]), status=201)


def build_app(settings: AgentSettings, environ: Mapping[str, str]) -> web.Application:
    app = web.Application(middlewares=[errors, auth])
    agent = Agent(settings, child_env(environ))
    app[AGENT] = agent
    r = app.router
    r.add_get("/health", health)
    r.add_post("/claim", claim)
    r.add_post("/execute", execute)
    r.add_post("/contexts", create_context)
    r.add_get("/contexts", list_contexts)
    r.add_post("/contexts/{id}/{action:restart|interrupt}", context_action)
    r.add_delete("/contexts/{id}", delete_context)
    r.add_post("/commands", run_command)
    r.add_get("/commands", list_commands)
    r.add_post("/commands/{id}/stdin", command_stdin)
    r.add_post("/commands/{id}/signal", command_signal)
    r.add_put("/files/{path:.*}", put_file)
    r.add_get("/files/{path:.*}", get_file)
    r.add_delete("/files/{path:.*}", delete_file)
    r.add_get("/stat/{path:.*}", stat_path)
    r.add_get("/dirs/{path:.*}", list_dir)
    r.add_post("/dirs/{path:.*}", make_dir)

    async def _prewarm(app: web.Application) -> None:
        await agent.prewarm()

    async def _close(app: web.Application) -> None:
        await agent.close()

    app.on_startup.append(_prewarm)
    app.on_shutdown.append(_close)
    return app
