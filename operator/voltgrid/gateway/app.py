"""Build and run one gateway: the data path on the public port, the admin application behind it.

:class:`GatewayServer` listens on ``host:port`` with :class:`~voltgrid.gateway.http1.ClientConnection`
(httptools on asyncio, uvloop when the process runs on it) and answers every request through
:class:`~voltgrid.gateway.pipeline.Pipeline`. Paths under ``/_voltgrid/`` (the Session API, the
internal calls between replicas, health and metrics) are served by an aiohttp application that
listens only on a unix socket in a private directory, reached through the same pooled relay: these
are control calls, where aiohttp's conveniences are worth its cost. Starting the server starts the
gateway's background jobs; stopping it stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler

from voltgrid.api.function import Function
from voltgrid.backends.base import InstanceBackend
from voltgrid.gateway import events, internal, sandbox_api, session_api
from voltgrid.gateway.catalog_watch import FunctionWatcher
from voltgrid.gateway.core import GATEWAY, Gateway
from voltgrid.gateway.errors import GatewayError, error_response
from voltgrid.gateway.grpc import GrpcFront
from voltgrid.gateway.http1 import ClientConnection, ConnectionGuard
from voltgrid.gateway.pipeline import Pipeline
from voltgrid.gateway.pool_watch import KubePoolPods, PoolWatcher
from voltgrid.gateway.proxy import Target
from voltgrid.gateway.sandboxes import PoolPods
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.registry.kubeapi import KubeApi
from voltgrid.registry.ownership import Membership

logger = logging.getLogger(__name__)

#: Seconds requests in flight get to finish when the server stops.
SHUTDOWN_GRACE = 5.0


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The admin routes answer failures as the data path does: a JSON error body, never HTML."""
    try:
        return await handler(request)
    except GatewayError as e:
        return error_response(e.status, e.code, e.message, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(e.status, e.reason.lower().replace(" ", "_"), e.text or e.reason)


def build_admin_app(
    gateway: Gateway,
    *,
    watcher_api: KubeApi | None = None,
    functions_api: KubeApi | None = None,
    functions_namespace: str | None = None,
) -> web.Application:
    """The Session API, the internal calls, health and metrics; its startup starts the gateway."""
    app = web.Application(middlewares=(_errors,), client_max_size=gateway.settings.max_body_bytes)
    app[GATEWAY] = gateway
    internal.add_routes(app)
    session_api.add_routes(app)
    sandbox_api.add_routes(app)
    events.add_routes(app)

    async def on_startup(_: web.Application) -> None:
        await gateway.start(watcher_api)

    async def on_cleanup(_: web.Application) -> None:
        await gateway.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    if functions_api is not None:
        watcher = FunctionWatcher(functions_api, gateway.catalog, functions_namespace)
        gateway.catalog_synced = watcher.synced
        app.cleanup_ctx.append(_watch(watcher.run, "voltgrid-functions"))
        if gateway.sandboxes is not None:
            pools = PoolWatcher(functions_api, gateway.sandboxes, functions_namespace)
            app.cleanup_ctx.append(_watch(pools.run, "voltgrid-pools"))
    return app


def _watch(run: Callable[[], Any], name: str) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(run(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context


class GatewayServer:
    """One gateway process (see the module docstring)."""

    def __init__(
        self,
        settings: GatewaySettings,
        backend: InstanceBackend,
        functions: Sequence[Function],
        *,
        membership: Membership | None = None,
        watcher_api: KubeApi | None = None,
        functions_api: KubeApi | None = None,
        functions_namespace: str | None = None,
        pool_pods: PoolPods | None = None,
    ) -> None:
        self.settings = settings
        if pool_pods is None and functions_api is not None:
            pool_pods = KubePoolPods(functions_api)  # in a cluster the pools are the operator's pods
        self.gateway = Gateway(settings, backend, list(functions), membership, pool_pods)
        self.admin_app = build_admin_app(
            self.gateway,
            watcher_api=watcher_api,
            functions_api=functions_api,
            functions_namespace=functions_namespace,
        )
        self._runner: web.AppRunner | None = None
        self._servers: list[asyncio.Server] = []
        self._dir: Path | None = None
        self._connections: set[ClientConnection] = set()
        self._grpc: GrpcFront | None = None

    async def start(self, host: str | None = None, port: int | None = None, *, reuse_port: bool = False) -> None:
        """Start the gateway and listen on ``host:port`` (the settings' by default)."""
        self._dir = Path(tempfile.mkdtemp(prefix="voltgrid-admin-"))  # 0700: only this user reaches it
        socket_path = str(self._dir / "admin.sock")
        self._runner = web.AppRunner(self.admin_app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.UnixSite(self._runner, socket_path).start()
        pipeline = Pipeline(self.gateway, Target(socket_path, None))
        guard = ConnectionGuard(self.settings)
        connections = self._connections

        grpc = self._grpc = GrpcFront(self.gateway)

        def connection() -> ClientConnection:
            conn = ClientConnection(guard, pipeline, upgrade_h2=grpc.take_over, on_close=connections.discard)
            connections.add(conn)
            return conn

        loop = asyncio.get_running_loop()
        host = host if host is not None else self.settings.host
        listen = [(port if port is not None else self.settings.port, reuse_port)]
        if self.settings.worker_index is not None:  # a worker: its own member port as well
            listen.append((urlsplit(self.settings.self_url).port or 80, False))
        for number, shared in listen:
            server = await loop.create_server(
                connection, host, number, backlog=2048, reuse_address=True, reuse_port=shared or None
            )
            self._servers.append(server)

    async def stop(self) -> None:
        """Stop listening, give requests in flight :data:`SHUTDOWN_GRACE` seconds, stop the gateway."""
        if self._servers:
            for server in self._servers:
                server.close()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SHUTDOWN_GRACE
            for conn in list(self._connections):
                conn.close_when_idle()
            while any(conn.busy for conn in self._connections) and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # only while stopping: requests end on their own, polled
            for conn in list(self._connections):
                conn.abort()
            self._servers = []
        if self._grpc is not None:
            await self._grpc.close(SHUTDOWN_GRACE)
            self._grpc = None
        self.gateway.pool.close()  # first: the admin application then sees its clients gone, not cut
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


async def run_gateway(server: GatewayServer, *, reuse_port: bool = False, started: asyncio.Event | None = None) -> None:
    """Serve ``server`` on its settings' host and port until cancelled."""
    settings = server.settings
    await server.start(reuse_port=reuse_port)
    try:
        logger.info("voltgrid gateway listening on %s:%s as %s", settings.host, settings.port, settings.self_url)
        if started is not None:
            started.set()
        await asyncio.Event().wait()
    finally:
        await server.stop()
