"""The gateway's components wired together, and their start and stop.

:class:`Gateway` owns the HTTP client pool, the session manager and lifecycle, membership and the
background jobs (timers, resync, EndpointSlice watch). The data path is given it; the admin
application's handlers reach it through ``request.app[GATEWAY]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web

from voltgrid.api.function import Function
from voltgrid.api.settings import SettingsError
from voltgrid.backends.base import InstanceBackend
from voltgrid.gateway.a2a import TaskContexts
from voltgrid.gateway.auth import JwtVerifier
from voltgrid.gateway.controlplane import PATIENCE_SHARE, PatientBackend
from voltgrid.gateway.functions import FunctionCatalog
from voltgrid.gateway.lifecycle import Lifecycle
from voltgrid.gateway.manager import SessionManager
from voltgrid.gateway.metrics import GatewayMetrics
from voltgrid.gateway.peers import Peers
from voltgrid.gateway.ratelimit import MintLimiter
from voltgrid.gateway.sandboxes import PoolPods, SandboxPools
from voltgrid.gateway.settings import GatewaySettings
from voltgrid.gateway.upstream import UpstreamPool
from voltgrid.registry.kubeapi import KubeApi
from voltgrid.registry.ownership import Membership
from voltgrid.sandbox_claims import ClaimError, load_signing_key

logger = logging.getLogger(__name__)

#: Connections kept per upstream host (instances and peers).
UPSTREAM_CONNECTIONS_PER_HOST: Final = 1000
KEEPALIVE_TIMEOUT: Final = 30.0


class Gateway:
    """One gateway replica."""

    def __init__(
        self,
        settings: GatewaySettings,
        backend: InstanceBackend,
        functions: list[Function],
        membership: Membership | None = None,
        pool_pods: PoolPods | None = None,
    ) -> None:
        self.settings = settings
        # Placement waits out control-plane outages (bounded by the cold-start timeout): see controlplane.
        patience = settings.cold_start_timeout * PATIENCE_SHARE
        self.backend: InstanceBackend = PatientBackend(backend, patience=patience, retry_after=settings.retry_after)
        self.catalog = FunctionCatalog(settings, functions)
        #: A2A task id -> context id, per Function, for the tasks whose answers this replica relayed.
        self.a2a_tasks: dict[str, TaskContexts] = {}
        #: The trusted proxies' networks, parsed once (read per request).
        self.proxy_networks = settings.proxy_networks
        self.membership = membership or Membership(settings.self_url, settings.peers)
        self.metrics = GatewayMetrics()
        self.api_verifier = JwtVerifier(settings.api_jwt) if settings.api_jwt else None
        self.api_tokens = settings.all_api_tokens()
        self.mint_limiter = MintLimiter(settings.session_mint_rate, settings.session_mint_burst, time.monotonic)
        self.manager = SessionManager(settings, self.backend, self.catalog, self.membership, self.metrics)
        #: The data path's pooled connections to instances and replicas (:mod:`voltgrid.gateway.upstream`).
        self.pool = UpstreamPool()
        #: Control calls to replicas and instances (internal API, persist callbacks): aiohttp's client.
        self.http: aiohttp.ClientSession | None = None
        self.lifecycle: Lifecycle | None = None
        self.peers: Peers | None = None
        #: Set once the Function catalog has been listed from the cluster (None: no cluster catalog);
        #: until then the replica is not ready (see ``/_voltgrid/readyz``).
        self.catalog_synced: asyncio.Event | None = None
        #: Warm sandboxes of SandboxTemplate pools (None: no pool source, so no Sandbox API).
        self.sandboxes = (
            SandboxPools(
                self.membership,
                pool_pods,
                _claim_key(settings.sandbox_claim_key_file),
                claim_timeout=settings.sandbox_claim_timeout,
                metrics=self.metrics,
            )
            if pool_pods is not None
            else None
        )
        self._jobs: list[asyncio.Task[Any]] = []
        self._membership_changed = asyncio.Event()

    def task_contexts(self, function: str) -> TaskContexts:
        """The A2A task map of ``function`` on this replica."""
        tasks = self.a2a_tasks.get(function)
        if tasks is None:
            tasks = self.a2a_tasks[function] = TaskContexts()
        return tasks

    async def start(self, watcher_api: KubeApi | None = None) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=UPSTREAM_CONNECTIONS_PER_HOST,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            enable_cleanup_closed=False,
            ttl_dns_cache=60,
        )
        self.http = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
        )
        self.peers = Peers(self.http, self.membership, self.settings.internal_token)
        self.lifecycle = Lifecycle(self.manager, self.http, self.peers)
        self.lifecycle.scheduler.start()
        self.membership.on_change(self._membership_changed.set)
        loop = asyncio.get_running_loop()
        self.manager.loop = loop
        self._jobs.append(loop.create_task(self._resync_loop(), name="voltgrid-resync"))
        if watcher_api is not None and self.settings.membership_service:
            from voltgrid.registry.endpointslices import EndpointSliceWatcher  # noqa: PLC0415 (cluster only)

            watcher = EndpointSliceWatcher(
                self.membership,
                watcher_api,
                namespace=self.settings.membership_namespace,
                service=self.settings.membership_service,
                port_name=self.settings.membership_port_name,
                expand=self.settings.member_urls,
            )
            self._jobs.append(loop.create_task(watcher.run(), name="voltgrid-endpointslices"))
        for fn in self.catalog:
            self.manager.warm.refill(fn)
        if self.sandboxes is not None:
            self.sandboxes.start()

    async def _resync_loop(self) -> None:
        assert self.lifecycle is not None
        await self.lifecycle.resync()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._membership_changed.wait(), self.settings.resync_interval)
            changed = self._membership_changed.is_set()
            self._membership_changed.clear()
            try:
                await (self.lifecycle.rebalance() if changed else self.lifecycle.resync())
            except Exception:
                logger.exception("resync failed")

    async def stop(self) -> None:
        for job in self._jobs:
            job.cancel()
        await asyncio.gather(*self._jobs, return_exceptions=True)
        self._jobs.clear()
        if self.lifecycle is not None:
            await self.lifecycle.stop()
        await self.manager.close()
        if self.sandboxes is not None:
            await self.sandboxes.stop()
        if self.settings.manage_warm_pool:
            await self.manager.warm.drain()
        if self.http is not None:
            await self.http.close()


def _claim_key(path: str | None) -> Any:
    """The sandbox claim signing key, or None (the Sandbox API then answers 503 naming the setting)."""
    if path is None:
        return None
    try:
        return load_signing_key(Path(path).read_bytes())
    except (OSError, ValueError, ClaimError) as exc:
        raise SettingsError(f"sandbox_claim_key_file {path!r}: {exc}") from None


GATEWAY: Final = web.AppKey("voltgrid.gateway", Gateway)
