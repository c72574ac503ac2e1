"""Build and run the gateway application.

``build_app(settings, backend, functions, membership=None, watcher_api=None)`` returns the aiohttp
application (startup starts the gateway's background jobs, cleanup stops them);
``run_gateway(settings, backend, functions, ...)`` serves it until cancelled. Header limits go to
aiohttp's parser (:func:`server_limits`), so oversized request lines and headers are refused with
400/431 before any handler runs (they are the application's ``handler_args``, so any runner
applies them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiohttp import web

from voltgrid.api.function import Function
from voltgrid.backends.base import InstanceBackend
from voltgrid.gateway import internal, session_api
from voltgrid.gateway.catalog_watch import FunctionWatcher
from voltgrid.gateway.core import GATEWAY, Gateway
from voltgrid.gateway.invoke import invoke
from voltgrid.gateway.middlewares import INVOKE_ROUTE, PIPELINE
from voltgrid.gateway.server import GatewayRunner
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.registry.kubeapi import KubeApi
from voltgrid.registry.ownership import Membership

logger = logging.getLogger(__name__)


def server_limits(settings: GatewaySettings) -> dict[str, Any]:
    """aiohttp request-parser limits (``handler_args`` of a runner) from the settings."""
    return {
        "max_line_size": settings.max_field_bytes,
        "max_field_size": settings.max_field_bytes,
        "max_headers": settings.max_headers,
    }


def build_app(
    settings: GatewaySettings,
    backend: InstanceBackend,
    functions: Sequence[Function],
    *,
    membership: Membership | None = None,
    watcher_api: KubeApi | None = None,
    functions_api: KubeApi | None = None,
    functions_namespace: str | None = None,
) -> web.Application:
    """The gateway as an aiohttp application (see the module docstring).

    With ``functions_api`` (the access layer's :class:`~voltgrid.registry.kubeapi.KubeApi`) the catalog
    follows the cluster's Function objects (:mod:`voltgrid.gateway.catalog_watch`) besides the ``functions`` given.
    """
    gateway = Gateway(settings, backend, list(functions), membership)
    app = web.Application(
        middlewares=PIPELINE, client_max_size=settings.max_body_bytes, handler_args=server_limits(settings)
    )
    app[GATEWAY] = gateway
    internal.add_routes(app)
    session_api.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", invoke, name=INVOKE_ROUTE)

    async def on_startup(_: web.Application) -> None:
        await gateway.start(watcher_api)

    async def on_cleanup(_: web.Application) -> None:
        await gateway.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    if functions_api is not None:
        watcher = FunctionWatcher(functions_api, gateway.catalog, functions_namespace)
        gateway.catalog_synced = watcher.synced
        app.cleanup_ctx.append(_function_watch(watcher))
    return app


def _function_watch(watcher: FunctionWatcher) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(_: web.Application) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(watcher.run(), name="voltgrid-functions")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context


async def run_gateway(
    settings: GatewaySettings,
    backend: InstanceBackend,
    functions: Sequence[Function],
    *,
    membership: Membership | None = None,
    watcher_api: KubeApi | None = None,
    functions_api: KubeApi | None = None,
    functions_namespace: str | None = None,
    started: asyncio.Event | None = None,
) -> None:
    """Serve the gateway on ``settings.host:settings.port`` until cancelled."""
    app = build_app(
        settings,
        backend,
        functions,
        membership=membership,
        watcher_api=watcher_api,
        functions_api=functions_api,
        functions_namespace=functions_namespace,
    )
    runner = GatewayRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, backlog=2048, reuse_address=True)
        await site.start()
        logger.info("voltgrid gateway listening on %s:%s as %s", settings.host, settings.port, settings.self_url)
        if started is not None:
            started.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
